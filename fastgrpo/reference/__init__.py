"""Plain-PyTorch twins of every fastgrpo op: the CPU path and the test oracle, written next to the papers' math."""
from .flow_step import FAMILIES, KL_DIVISORS, LOGPROBS, FlowStepOutput, flow_step, step_coefficients
from .dpm_solver import dpm_solver_2m_step

__all__ = ["FAMILIES", "KL_DIVISORS", "LOGPROBS", "FlowStepOutput", "flow_step", "step_coefficients",
           "dpm_solver_2m_step"]

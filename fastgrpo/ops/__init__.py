"""Public ops of fastgrpo. Each dispatches to a Triton kernel / the C++-CUDA extension or its PyTorch reference
(``FASTGRPO_BACKEND``)."""
from ..reference.flow_step import FlowStepOutput
from .advantages import group_advantages, keys_to_group_ids
from .dpm_solver import dpm_solver_2m_step
from .flow_step import flow_step
from .preprocess import clip_preprocess, preprocess_backend

__all__ = ["FlowStepOutput", "flow_step", "dpm_solver_2m_step", "group_advantages", "keys_to_group_ids",
           "clip_preprocess", "preprocess_backend"]

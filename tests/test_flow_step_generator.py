"""flow_step's ``generator=`` on the Triton path: the in-kernel Philox seed is drawn from it (same state, same ε; the
generator advances; the global RNG is untouched), on CPU and CUDA; contradictory or foreign generators are refused."""
import pytest
import torch

from fastgrpo.ops import flow_step
from fastgrpo.ops.flow_step import seed_from_generator

from helpers import random_step


def _step(v, x, s, sn, generator):
    return flow_step(v, x, s, sn, 0.7, generator=generator, backend="triton").x_next


def test_triton_path_draws_its_noise_from_a_cpu_generator():
    v, x, s, sn = random_step((3, 4, 5, 6), torch.float32, seed=0)
    torch.manual_seed(1)
    untouched = torch.rand(4)
    torch.manual_seed(1)
    first = _step(v, x, s, sn, torch.Generator().manual_seed(7))
    again = torch.Generator().manual_seed(7)
    assert torch.equal(_step(v, x, s, sn, again), first)  # the same state gives the same ε
    assert not torch.equal(_step(v, x, s, sn, again), first)  # and the generator moved on
    assert torch.equal(torch.rand(4), untouched)  # the global RNG was not used


def test_generator_with_noise_seed_or_x_next_or_of_the_wrong_type_is_refused():
    v, x, s, sn = random_step((2, 3, 4), torch.float32, seed=1)
    g = torch.Generator().manual_seed(0)
    for extra in (dict(seed=3), dict(noise=torch.randn_like(v)), dict(x_next=torch.randn_like(v))):
        for backend in ("triton", "torch"):
            with pytest.raises(ValueError, match="generator"):
                flow_step(v, x, s, sn, 0.7, generator=g, backend=backend, **extra)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        flow_step(v, x, s, sn, 0.7, generator=7, backend="triton")


class _PhiloxGenerator:
    """What seed_from_generator reads of a CUDA generator: Philox (seed, offset), kept on the host."""

    def __init__(self, seed: int, offset: int = 0):
        self.device, self.seed, self.offset = torch.device("cuda"), seed, offset

    def initial_seed(self):
        return self.seed

    def get_offset(self):
        return self.offset

    def set_offset(self, offset):
        self.offset = offset


def test_seed_from_a_philox_generator_follows_its_state_and_advances_it():
    g = _PhiloxGenerator(5)
    first, second = seed_from_generator(g), seed_from_generator(g)
    assert g.offset == 8 and first != second
    assert seed_from_generator(_PhiloxGenerator(5)) == first and seed_from_generator(_PhiloxGenerator(5, 4)) == second
    assert seed_from_generator(_PhiloxGenerator(6)) != first
    assert all(0 <= seed_from_generator(_PhiloxGenerator(k)) < 2**31 - 1 for k in range(100))


@pytest.mark.gpu
def test_triton_path_draws_its_noise_from_a_cuda_generator():
    v, x, s, sn = (t.cuda() for t in random_step((4, 16, 32, 32), torch.float32, seed=0))
    torch.manual_seed(1)
    untouched = torch.rand(4)
    torch.manual_seed(1)
    g = torch.Generator("cuda").manual_seed(7)
    first = _step(v, x, s, sn, g)
    assert g.get_offset() > 0
    again = torch.Generator("cuda").manual_seed(7)
    assert torch.equal(_step(v, x, s, sn, again), first)
    assert not torch.equal(_step(v, x, s, sn, again), first)
    assert torch.equal(torch.rand(4), untouched)  # was: the seed came from the global CPU RNG

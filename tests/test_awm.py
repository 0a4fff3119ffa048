"""AWM's loss against its published gradient in float64, the ghuber transform and the stratified timesteps (fresh
random inputs, fixed seeds): L = mean(max(−Â·ρ, −Â·clip(ρ, 1 ± κ))), ρ = exp(lp − sg(lp)), lp = −t·ghuber(ℓ), so
L = −mean(Â) in value and ∂L/∂ℓ_i = Â_i·t_i·(ℓ_i + δ)^(p−1)/B."""
import pytest
import torch

from fastgrpo.algorithms.awm import GHUBER_FLOOR, awm_loss, ghuber, stratified_indices


@pytest.mark.parametrize("p", [0.25, 0.5, 1.0])
def test_loss_value_and_gradient_match_the_published_form(p):
    g = torch.Generator().manual_seed(7)
    B = 9
    error = (torch.rand(B, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    t = torch.rand(B, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64) * 4  # some beyond ±5: clamped
    out = awm_loss(error, t, adv, p=p, adv_clip=5.0)
    a_hat = adv.clamp(-5, 5) / 5
    assert torch.allclose(out.loss, -a_hat.mean())
    assert torch.allclose(out.log_prob, -t * ((error.detach() + GHUBER_FLOOR) ** p - GHUBER_FLOOR ** p) / p)
    out.loss.backward()
    assert torch.allclose(error.grad, a_hat * t * (error.detach() + GHUBER_FLOOR) ** (p - 1) / B, rtol=1e-10)


def test_a_positive_advantage_lowers_the_flow_matching_error():
    v = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    error = (v - target).pow(2).flatten(1).mean(1)
    awm_loss(error, torch.full((4,), 0.5, dtype=torch.float64), torch.tensor([5.0, 5.0, -5.0, 0.0])).loss.backward()
    step = v.detach() - 0.1 * v.grad
    after = (step - target).pow(2).flatten(1).mean(1)
    assert after[0] < error[0] and after[1] < error[1] and after[2] > error[2] and after[3] == error[3]


def test_ghuber_is_the_identity_at_p_one_and_concave_below():
    x = torch.linspace(0, 4, 41, dtype=torch.float64)
    assert torch.allclose(ghuber(x, 1.0), x, atol=1e-12)
    y = ghuber(x, 0.25)
    assert y[0].abs() < 1e-12 and torch.all(y.diff() > 0) and torch.all(y.diff().diff() < 0)
    with pytest.raises(ValueError, match="p must be"):
        ghuber(x, 0.0)


@pytest.mark.parametrize("include_init", [False, True])
def test_stratified_timesteps_take_one_index_per_stratum(include_init):
    start, steps, count = (0 if include_init else 1), 14, 6
    end = int(steps * 0.9)  # the released 14-step schedule: int(14·0.9) = 12
    bounds = torch.linspace(start, end, count + 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(300):
        picks = stratified_indices(steps, count, 0.9, include_init, g)
        assert len(picks) == count
        for k, i in enumerate(picks):
            assert bounds[k].floor() <= i < bounds[k + 1] and start <= i < end
        seen.update(picks)
    assert seen == set(range(start, end))  # every index of [start, end) is reachable
    with pytest.raises(ValueError, match="no timesteps"):
        stratified_indices(2, 1, 0.5, False, g)

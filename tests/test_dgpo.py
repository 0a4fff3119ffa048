"""DGPO's loss against the paper's objective in float64 (fresh random inputs, fixed seeds): maximise
log σ(R_θ(G⁺) − R_θ(G⁻)) with R_θ(G±) = −(β/G)·Σ_{i∈G±}|A_i|·(ℓ_i − ℓ_ref,i); the released loss
mean_i(sg(σ(S_g))·A_i·ℓ_i) has the same gradient up to the constant G/(β·B)."""
import pytest
import torch

from fastgrpo.algorithms.dgpo import dgpo_loss


def _paper_objective(errors, ref, adv, ids, groups, beta, G):
    """−Σ_g log σ(R(G⁺_g) − R(G⁻_g)), the better (A > 0) and worse (A < 0) halves of each group written out."""
    total = 0
    for g in range(groups):
        m = ids == g
        d, a = errors[m] - ref[m], adv[m]
        r_pos = -(beta / G) * (a.clamp(min=0).abs() * d).sum()
        r_neg = -(beta / G) * (a.clamp(max=0).abs() * d).sum()
        total = total - torch.nn.functional.logsigmoid(r_pos - r_neg)
    return total


def test_gradient_is_the_paper_objectives_up_to_a_constant():
    g = torch.Generator().manual_seed(4)
    G, groups, beta = 4, 3, 50.0
    B = G * groups
    ids = torch.arange(groups).repeat_interleave(G)
    errors = (torch.rand(B, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    ref = torch.rand(B, generator=g, dtype=torch.float64) + 0.5
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    out = dgpo_loss(errors, ref, adv, ids, num_groups=groups, beta_dpo=beta, group_size=G)
    out.loss.backward()
    paper = errors.detach().clone().requires_grad_(True)
    _paper_objective(paper, ref, adv, ids, groups, beta, G).backward()
    assert torch.allclose(errors.grad, paper.grad * G / (beta * B), rtol=1e-10)
    # the score is a sum over the group: each sample carries its own group's S_g
    want = torch.stack([(beta / G) * (adv[ids == k] * (errors.detach() - ref)[ids == k]).sum() for k in ids])
    assert torch.allclose(out.group_score, want)


def test_one_groups_samples_do_not_move_anothers_score():
    ids = torch.tensor([0, 0, 1, 1])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    ref = torch.zeros(4)
    a = dgpo_loss(torch.tensor([1.0, 2.0, 3.0, 4.0]), ref, adv, ids, num_groups=2, beta_dpo=1.0, group_size=2)
    b = dgpo_loss(torch.tensor([1.0, 2.0, 9.0, 4.0]), ref, adv, ids, num_groups=2, beta_dpo=1.0, group_size=2)
    assert torch.equal(a.group_score[:2], b.group_score[:2]) and not torch.equal(a.group_score[2:], b.group_score[2:])


def test_clip_drops_the_gradient_where_the_ratio_left_the_range():
    errors = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    # ρ = exp(ℓ_old − ℓ): 1.105 (A > 0: dropped), 1.0 (kept), 0.905 (A < 0: dropped), 1.105 (A < 0: kept)
    old = torch.tensor([1.1, 1.0, 0.9, 1.1], dtype=torch.float64)
    out = dgpo_loss(errors, torch.zeros(4, dtype=torch.float64), adv, torch.zeros(4, dtype=torch.long),
                    num_groups=1, beta_dpo=1.0, group_size=4, old_error=old, clip=0.05)
    out.loss.backward()
    assert errors.grad[0] == 0 and errors.grad[2] == 0 and errors.grad[1] > 0 and errors.grad[3] < 0
    assert out.clipfrac == 0.5
    with pytest.raises(ValueError, match="old_error"):
        dgpo_loss(errors, errors, adv, torch.zeros(4, dtype=torch.long), num_groups=1, beta_dpo=1.0, group_size=4,
                  clip=0.1)

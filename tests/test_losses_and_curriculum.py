"""Policy losses against their formulas; AdaGRPO's capability tracker: EMA math, selection, state, distributed."""
import pytest
import torch
import torch.multiprocessing as mp

from fastgrpo.algorithms import (CapabilityTracker, adagrpo_loss, kl_penalty, mixgrpo_kl, ppo_clip_loss,
                                 tempflow_weights)


def test_ppo_clip_matches_formula_symmetric_and_asymmetric():
    g = torch.Generator().manual_seed(0)
    lp, old = torch.randn(64, generator=g) * 1e-3, torch.randn(64, generator=g) * 1e-3
    adv = torch.randn(64, generator=g) * 3
    for clip in (1e-4, (1e-4, 3e-4)):
        low, high = (clip, clip) if isinstance(clip, float) else clip
        out = ppo_clip_loss(lp, old, adv, clip, adv_clip=2.0)
        a = adv.clamp(-2, 2)
        ratio = torch.exp(lp - old)
        want = torch.maximum(-a * ratio, -a * ratio.clamp(1 - low, 1 + high)).mean()
        torch.testing.assert_close(out.loss, want)
        torch.testing.assert_close(out.clipfrac, ((ratio < 1 - low) | (ratio > 1 + high)).float().mean())
        torch.testing.assert_close(out.approx_kl, 0.5 * ((lp - old) ** 2).mean())


def test_first_ratio_one_gives_the_policy_gradient():
    lp = torch.randn(8, requires_grad=True)
    adv = torch.randn(8)
    out = ppo_clip_loss(lp, lp.detach(), adv, 1e-4)
    out.loss.backward()
    torch.testing.assert_close(out.loss, -adv.mean())
    torch.testing.assert_close(lp.grad, -adv / 8)
    assert out.clipfrac.item() == 0 and out.approx_kl.item() == 0


def test_adagrpo_loss_value_and_gradient():
    lp = torch.randn(12, requires_grad=True)
    adv = torch.randn(12)
    out = adagrpo_loss(lp, adv)
    out.loss.backward()
    torch.testing.assert_close(out.loss, -adv.mean())
    torch.testing.assert_close(lp.grad, -adv / 12)


def test_kl_terms_and_tempflow_weights():
    kl = torch.rand(5, requires_grad=True)
    kl_penalty(kl, 0.04).backward()
    torch.testing.assert_close(kl.grad, torch.full((5,), 0.04 / 5))
    lp, old = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(mixgrpo_kl(lp, old), 0.5 * ((lp - old) ** 2).mean())
    s = torch.rand(9) + 0.1
    torch.testing.assert_close(tempflow_weights(s).mean(), torch.tensor(1.0))
    torch.testing.assert_close(tempflow_weights(s, 2.25), 2.25 * s)
    w = tempflow_weights(s)
    out = ppo_clip_loss(torch.zeros(9), torch.zeros(9), torch.ones(9), weights=w)
    torch.testing.assert_close(out.loss, -(w * 1.0).mean())


def test_losses_compile_fullgraph():
    fn = torch.compile(lambda lp, old, a: ppo_clip_loss(lp, old, a, (1e-4, 2e-4), adv_clip=5.0).loss
                       + adagrpo_loss(lp, a).loss, backend="aot_eager", fullgraph=True)
    lp, old, a = torch.randn(6), torch.randn(6), torch.randn(6)
    torch.testing.assert_close(fn(lp, old, a), ppo_clip_loss(lp, old, a, (1e-4, 2e-4), adv_clip=5.0).loss
                               + adagrpo_loss(lp, a).loss)


def test_capability_ema_and_selection():
    t = CapabilityTracker(decay=0.8)
    b1, b2 = torch.tensor([1.0, 2.0, 6.0]), torch.tensor([0.0, 4.0])
    t.update(b1)
    torch.testing.assert_close(t.mean, b1.mean())
    torch.testing.assert_close(t.var, b1.var(correction=0))
    t.update(b2)
    torch.testing.assert_close(t.mean, 0.8 * b1.mean() + 0.2 * b2.mean())
    torch.testing.assert_close(t.var, 0.8 * b1.var(correction=0) + 0.2 * b2.var(correction=0))
    torch.testing.assert_close(t.std, t.var.sqrt())
    cand = torch.tensor([10.0, 2.6, 2.9, -1.0, 2.4])
    assert t.select(cand, 1).tolist() == [2]  # μ = 2.8
    assert t.select(cand, 3).tolist() == [2, 1, 4]
    with pytest.raises(ValueError, match="k must be"):
        t.select(cand, 6)


def test_capability_state_round_trip_and_config_check():
    t = CapabilityTracker(decay=0.8)
    t.update(torch.randn(10))
    u = CapabilityTracker(decay=0.8)
    u.load_state_dict(t.state_dict())
    nxt = torch.randn(10)
    t.update(nxt)
    u.update(nxt)
    assert torch.equal(t.mean, u.mean) and torch.equal(t.var, u.var) and bool(u.ready)
    with pytest.raises(ValueError, match="decay"):
        CapabilityTracker(decay=0.9).load_state_dict(t.state_dict())
    with pytest.raises(ValueError, match="missing"):
        CapabilityTracker().load_state_dict({"mean": t.mean})


def _worker(rank, world, path, per_rank, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    t = CapabilityTracker(decay=0.5, per_rank=per_rank)
    t.update(torch.tensor([1.0, 2.0]) if rank == 0 else torch.tensor([5.0, 8.0, 11.0]))
    out[rank] = torch.stack([t.mean, t.var])
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("per_rank", [False, True])
def test_capability_distributed_global_or_per_rank(tmp_path, per_rank):
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), per_rank, out), nprocs=2)
    everything = torch.tensor([1.0, 2.0, 5.0, 8.0, 11.0])
    if per_rank:
        torch.testing.assert_close(out[0], torch.tensor([1.5, 0.25]))
        torch.testing.assert_close(out[1], torch.tensor([8.0, 6.0]))
    else:
        want = torch.stack([everything.mean(), everything.var(correction=0)])
        torch.testing.assert_close(out[0], want)
        torch.testing.assert_close(out[1], want)

"""How many DPM-Solver++ 2M steps MixGRPO-Flash's tail needs to score the image the trajectory leads to.

On the shipped shapes world, the default sampler (T = 10, shift 3, η = 0.7, flow_sde, w = 4): ``prompts`` training
prompts × ``group`` samples, each trajectory run through its SDE window [end − 4, end) once per finish, with the same
noise and the same in-window noise seeds (so every finish starts from the same x at σ_end):

* ``euler_fine``: 50 Euler steps from σ_end to 0 (uniform in unshifted t, shifted) — the reference;
* ``euler_T``: the schedule's own T − end Euler steps (MixGRPO without Flash);
* ``flash_k``: k DPM-Solver++ 2M steps (k = 1..6) on Flash's grid from σ_end to 0, as the rollout runs them.

Per (end, finish): mean reward and exact correctness, mean |Δ reward| per sample against ``euler_fine``, the
within-group Pearson correlation of rewards with ``euler_fine`` (what the advantages see), and the fraction of
samples whose correctness verdict agrees.

    OMP_NUM_THREADS=1 python -m benchmarks.study_flash_tail          # benchmarks/results/<device>/flash_tail.md
"""
from __future__ import annotations

import argparse
import time

import torch

from fastgrpo.models import load_backbone
from fastgrpo.train import load_config
from fastgrpo.train.rollout import sample
from fastgrpo.train.schedule import shifted, sigmas
from fastgrpo.world import shapes

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common

FINE = 50
TAILS = range(1, 7)


def tail_grid(base: torch.Tensor, end: int, steps: int, shift: float, count: int) -> torch.Tensor:
    """``base`` up to σ_end, then ``count`` steps to 0 uniform in unshifted t (Flash's grid)."""
    t0 = 1.0 - end / steps
    return torch.cat([base[:end], shifted(torch.linspace(t0, 0.0, count + 1, dtype=torch.float64), shift).float()])


def within_group_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over groups (rows) of the Pearson correlation of a and b; groups with no spread are skipped."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    ok = den > 1e-12
    return ((a * b).sum(1)[ok] / den[ok]).mean().item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--ends", default="4,6,8", help="window ends (the window is [end − 4, end))")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    cfg = load_config(None, ())
    s = cfg.sampling
    backbone = load_backbone(cfg.model, "cpu")
    model = backbone.transformer.eval()
    denoise = backbone.denoiser(model)
    combos = torch.tensor(shapes.TRAIN)[torch.randperm(len(shapes.TRAIN),
                                                       generator=torch.Generator().manual_seed(0))[:args.prompts]]
    combos = combos.repeat_interleave(args.group, 0)
    texts = backbone.encode_prompts([shapes.prompt(tuple(c)) for c in combos.tolist()])
    noise = torch.randn((len(combos), *backbone.latent_shape), generator=torch.Generator().manual_seed(1))
    base = sigmas(s.steps, s.shift)
    rows = []
    started = time.perf_counter()
    for end in (int(e) for e in args.ends.split(",")):
        window = (end - cfg.window.size, end)

        def finish(grid, flash):
            traj = sample(denoise, noise, grid, texts, None, guidance=s.guidance, eta=s.eta, family=s.family,
                          window=window, seed=7, flash=flash)
            images = backbone.decode(traj.latents)
            return (shapes.reward(images, combos).view(args.prompts, args.group),
                    shapes.correct(images, combos).view(args.prompts, args.group))

        ref_r, ref_c = finish(tail_grid(base, end, s.steps, s.shift, FINE), False)
        finishes = {f"euler_T ({s.steps - end} steps)": (base, False)}
        finishes.update({f"flash_{k}": (tail_grid(base, end, s.steps, s.shift, k), True) for k in TAILS})
        rows.append({"end": end, "finish": f"euler_fine ({FINE} steps)", "reward": ref_r.mean().item(),
                     "correct": ref_c.float().mean().item(), "mean_abs_dreward": 0.0, "group_corr": 1.0,
                     "correct_agree": 1.0})
        for name, (grid, flash) in finishes.items():
            r, c = finish(grid, flash)
            rows.append({"end": end, "finish": name, "reward": r.mean().item(), "correct": c.float().mean().item(),
                         "mean_abs_dreward": (r - ref_r).abs().mean().item(), "group_corr": within_group_corr(r, ref_r),
                         "correct_agree": (c == ref_c).float().mean().item()})
            print(rows[-1], flush=True)
    notes = [f"Shipped shapes world, default sampler (T = {s.steps}, shift {s.shift}, η = {s.eta}, {s.family}, "
             f"w = {cfg.window.size}); {args.prompts} training prompts × {args.group} samples; the same noise and "
             f"in-window noise for every finish of an end; reference: {FINE} Euler steps from σ_end to 0. "
             f"{time.perf_counter() - started:.0f} s in all, {torch.get_num_threads()} torch thread(s)."]
    common.write_results("flash_tail", rows, notes, args.out, device=torch.device("cpu"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

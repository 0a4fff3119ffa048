"""The training driver: prompt selection (AdaGRPO's online curriculum), the optimiser, evaluation, logging,
checkpoints and signals; everything else an iteration does belongs to its method (``fastgrpo.methods``, chosen by
the ``method`` key). Each iteration:

1. candidates: B training prompts; each gets one deterministic ODE anchor rollout and its reward;
2. curriculum: the capability EMA folds in the anchor rewards; the k prompts nearest μ_ema are kept
   (``adagrpo.curriculum=false``: k prompts at random);
3. the method's rollout of G samples per kept prompt and their rewards (``Method.rollout``);
4. its advantages (``Method.advantages``: group z-scores, plus AdaGRPO's calibrated global EMA advantage with
   ``adagrpo.fusion``);
5. its update (``Method.update``): gradients accumulated over the groups' units, ``optim.minibatches`` AdamW steps
   with gradient clipping; a non-finite loss or gradient drops that step.
All randomness is derived from (seed, iteration, rank), so a resumed run reproduces the uninterrupted one.

Data parallel (``torchrun``; gloo on CPU, NCCL on GPUs): each rank draws its own candidates and keeps its groups
whole; the capability EMA is all-reduced (one global EMA); gradients are averaged by DDP once per iteration
(``no_sync`` on every backward but the last); rank 0 evaluates and writes outputs and checkpoints.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import signal
import time
from pathlib import Path

import torch

from .._dist import rank_and_world
from ..algorithms import CapabilityTracker
from ..models import Backbone, TextEmbeddings, adapters_disabled, load_backbone
from ..models.attention import attention_dtype, set_attention_backend
from ..models.compile import compile_transformer
from ..models.fp8 import quantize_base
from ..models.lora import has_lora
from . import atomic, checkpoint, distributed, evaluate as evaluation, report, video
from .config import TrainConfig, dump_config, to_dict
from .overlap import RewardQueue, resolve_schedule
from .rollout import sample, sample_dpm
from .schedule import sigmas
from .task import Prompts, PromptTask, build_task
from .tracking import Tracking

log = logging.getLogger(__name__)

RUNTIME_KEYS = frozenset({"compile", "compile_scope", "attention_backend", "free_text_encoders", "text_cache"})
"""Model keys that change how a run computes, not what it trains: a resumed run may set them anew (another GPU,
another attention kernel) — its continuation then matches within that kernel's rounding, not bit for bit."""

START_EVAL = "eval_start.pt"
"""The first evaluation's seed-0 images, prompts, correctness and per-prompt scores (for before_after.png and the
paired differences of a resumed run)."""


def _noise(n: int, shape, seed: int) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


class Trainer:
    """``Trainer(config)`` builds the backbone (``model.kind``) and the task (prompts + reward) from the config;
    ``backbone=`` / ``task=`` inject ready ones instead (the benchmark's random-weight SD3.5-M)."""

    def __init__(self, config: TrainConfig, resume: str | None = None, *, backbone: Backbone | None = None,
                 task=None):
        self.cfg = config
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.backbone = backbone if backbone is not None else load_backbone(config.model, self.device)
        self.model = self.backbone.transformer
        self.quantized = quantize_base(self.model, config.model.base_fp8, self.device)
        """Linear layers of the frozen base in float8 (``model.base_fp8``; 0 = none)."""
        if config.sampling.shift == "auto":  # the pipeline's own schedule at this resolution and T, as a number
            config.sampling.shift = self.backbone.auto_shift(config.sampling.steps)
            log.info("sampling.shift=auto: %.6g (the pipeline's schedule at T = %d)", config.sampling.shift,
                     config.sampling.steps)
        self.task = task if task is not None else build_task(config, self.device)
        if config.model.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.attention = set_attention_backend(self.model, config.model.attention_backend, self.device,
                                               attention_dtype(self.model, config.model.autocast))
        """The attention kernel in use, in words (``model.attention_backend``; logged)."""
        self.lora = has_lora(self.model)
        # Flow-GRPO's KL reference: the initial model, frozen (kept only when optim.kl_beta > 0); under LoRA the
        # same transformer with its adapter disabled — no copy
        self.reference_copy = None
        if config.optim.kl_beta > 0 and not self.lora:
            self.reference_copy = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.rank, self.world_size = rank_and_world()
        if config.model.compile and config.model.compile_scope == "transformer" and config.distributed == "fsdp" \
                and self.world_size > 1:
            raise ValueError("model.compile_scope=transformer with distributed=fsdp: FSDP2 shards per block, compile "
                             "per block (model.compile_scope=blocks), as torchtitan does")
        self.compiled = (compile_transformer(self.model, self.device, config.model.compile_scope)
                         if config.model.compile else 0)
        """Modules compiled in place (``model.compile``: the transformer, or each block; 0 = eager)."""
        if self.compiled and self.reference_copy is not None:  # the KL reference's forwards: compiled alike
            compile_transformer(self.reference_copy, self.device, config.model.compile_scope)
        self.trained = distributed.wrap(self.model, config.distributed, self.world_size)
        self.sharded = config.distributed == "fsdp" and self.world_size > 1 and not self.lora
        """Checkpoints as torch.distributed.checkpoint shards (FSDP2 full fine-tuning on several ranks); LoRA and
        single-process runs keep one safetensors file, loadable anywhere."""
        self._background = distributed.checkpoint_group() if self.sharded and config.checkpoint_async else None
        """The process group of background shard writers (``checkpoint_async``), None: saves block."""
        self._pending = None
        """The sharded save still being written (published at the next save or at the end of the run)."""
        self.params = [p for p in self.trained.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("nothing to train: the transformer has no trainable parameters")
        self.optimizer = torch.optim.AdamW(self.params, lr=config.optim.lr, weight_decay=config.optim.weight_decay,
                                           **({"fused": True} if self.device.type == "cuda" else {}))
        self.tracker = CapabilityTracker(config.adagrpo.decay, device=self.device)
        self.iteration = 0
        self.optimizer_steps = 0
        """AdamW steps so far (several per iteration with ``optim.minibatches``); methods' schedules count them."""
        self.history: list[dict] = []
        self.nonfinite_in_a_row = 0
        self._base = evaluation.base_fingerprint(config.model)
        """The world weights' sha256, hashed once (every checkpoint records it; `fastgrpo eval` checks it)."""
        self._saved_at: int | None = None
        """The iteration of the last checkpoint this trainer wrote or resumed from (a finished run is saved once)."""
        self.out = Path(config.out_dir)
        self.train_prompts = self.task.train
        if len(self.train_prompts) < config.adagrpo.candidates:
            raise ValueError(f"adagrpo.candidates={config.adagrpo.candidates} exceeds the {len(self.train_prompts)} "
                             "training prompts")
        self.empty = self.backbone.encode_prompts([""]) if config.sampling.guidance > 1 else None
        self.text_note = self._cache_text_and_free_encoders()
        """What became of the text encoders, in words (``model.free_text_encoders``; logged)."""
        self.sigmas = sigmas(config.sampling.steps, config.sampling.shift)
        self.multi_columns = (isinstance(self.task, PromptTask) and len(self.task.names) > 1
                              and config.reward.aggregate == "zscore_sum")
        if self.multi_columns and (config.branch.enabled or config.stepwise.enabled):
            raise ValueError("reward.aggregate=zscore_sum with several rewards cannot be combined with "
                             "branch.enabled or stepwise.enabled (their reward columns are granularities / steps)")
        self.reward_schedule = resolve_schedule(config.reward.schedule, config.reward.names)
        """``reward.schedule`` with auto resolved: overlap when a reward waits on a server, else inline."""
        log.info("reward.schedule: %s%s%s", self.reward_schedule,
                 " (auto)" if config.reward.schedule == "auto" else "",
                 "; branch and stepwise rollouts score inline" if config.branch.enabled or config.stepwise.enabled
                 else "")
        self.sync_stages = False
        """Synchronise the device at stage boundaries so the stage timers are exact, and on CUDA record each
        stage's peak memory (``peak_<stage>_gib`` in the metrics) — benchmarks."""
        self.stage_peaks: dict[str, float] = {}
        self._stop = False
        self._tracking: Tracking | None = None
        """TensorBoard / wandb (``logging.backends``), rank 0 only."""
        self.last_eval: evaluation.Evaluation | None = None
        self._start_eval: dict | None = None
        self._wall_start = time.perf_counter()
        self._wall_offset = 0.0
        """Wall seconds of earlier sessions of a resumed run (``wall_s`` counts from the run's first start)."""
        from ..methods import build_method  # here: the methods build on fastgrpo.train's rollout and schedule

        self.method = build_method(config.method, self)
        """What an iteration does after selection (``fastgrpo.methods``): chosen once, from ``method``."""
        if resume is not None:
            self._resume(resume)

    def _cache_text_and_free_encoders(self) -> str | None:
        """``model.free_text_encoders``: every prompt the run will see encoded now, then the encoders dropped."""
        if not self.cfg.model.free_text_encoders or self.backbone.text_encoders is None:
            return None
        texts = list(dict.fromkeys([*self.train_prompts.texts,
                                    *(t for prompts in self.task.evaluation.values() for t in prompts.texts)]))
        limit = self.cfg.model.text_cache
        if len(texts) + (self.empty is not None) > limit:
            note = (f"text encoders kept: {len(texts)} prompts exceed model.text_cache={limit} (raise it to cache "
                    "them all and free the encoders)")
        else:
            for text in texts:  # one at a time, as the cache encodes a miss
                self.backbone.encode_prompts([text])
            released = self.backbone.free_text_encoders()
            note = f"text encoders freed after caching {len(texts)} prompts ({released / 2**30:.2f} GiB)"
        log.info(note)
        return note

    # ---- state ---------------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"iteration": self.iteration, "config": to_dict(self.cfg),
                "optimizer": None if self.sharded else distributed.optimizer_state(self.trained, self.optimizer),
                "tracker": self.tracker.state_dict(), "history": self.history,
                "base": self._base, "optimizer_steps": self.optimizer_steps, "method": self.cfg.method,
                "method_state": self.method.state_dict()}

    def _resume(self, run_dir: str) -> None:
        model_state, state = checkpoint.load(run_dir)
        saved, current = state["config"], to_dict(self.cfg)
        saved_method = state.get("method", "grpo")  # checkpoints from before methods were plug-ins: grpo
        if saved_method != self.cfg.method:
            raise ValueError(f"--resume {run_dir}: it was trained with method={saved_method!r}, this config has "
                             f"method={self.cfg.method!r}; a run continues with its own method")
        defaults = to_dict(TrainConfig())
        for key in ("sampling", "window", "adagrpo", "group_size", "seed", "model", "nft", "awm", "dgpo", "guard"):
            was, now = saved.get(key, defaults[key]), current[key]  # a section added since: its defaults
            if isinstance(now, dict):  # keys added since: their defaults; how a run runs may change on resume
                was = {k: was.get(k, v) for k, v in defaults[key].items() if k not in RUNTIME_KEYS}
                now = {k: v for k, v in now.items() if k not in RUNTIME_KEYS}
            if was != now:
                raise ValueError(f"--resume {run_dir}: its config differs in {key!r} ({was} vs {now}); resume "
                                 "with the run's own config")
        if model_state is None:  # a sharded checkpoint (FSDP2): names from its metadata, no weights gathered
            names, expected = checkpoint.shard_names(checkpoint.latest(run_dir)), set(self.model.state_dict())
        else:
            names, expected = set(model_state), set(self._weights())
        if names != expected:
            missing, extra = sorted(expected - names)[:3], sorted(names - expected)[:3]
            raise ValueError(f"--resume {run_dir}: its weights do not fit this model (missing {missing}, unexpected "
                             f"{extra}); resume with the run's own config")
        if model_state is None:  # any world size: each rank reads what its shards need
            checkpoint.load_shards(checkpoint.latest(run_dir), self.trained, self.optimizer)
        else:
            distributed.load_weights(self.trained, self.model, model_state, self.lora)
            distributed.load_optimizer_state(self.trained, self.optimizer, state["optimizer"])
        self.tracker.load_state_dict(state["tracker"])
        self.method.load_state_dict(state.get("method_state", {}))
        self.iteration = state["iteration"]
        self.optimizer_steps = state.get("optimizer_steps", self.iteration * self.cfg.optim.minibatches)
        self.history = state["history"]
        self._saved_at = self.iteration

    def finish_save(self) -> Path | None:
        """Publish the sharded save still being written in the background, if any (a collective: every rank)."""
        pending, self._pending = self._pending, None
        return pending.finish() if pending is not None else None

    def _weights(self) -> dict:
        """What a checkpoint holds: the LoRA adapter under LoRA, the whole transformer otherwise (gathered from
        every rank under FSDP)."""
        return distributed.full_weights(self.trained, self.model, self.lora)

    def save(self) -> Path | None:
        if self.sharded:  # each rank writes its shards; no whole copy on rank 0
            path = self.finish_save()  # one save in flight at most
            self._pending = checkpoint.save_sharded(self.out, self.iteration, self.trained, self.optimizer,
                                                    self._state(), background=self._background)
            self._saved_at = self.iteration
            return path if self._background is not None else self.finish_save()
        weights, state = self._weights(), self._state()  # collectives under FSDP: every rank takes part
        path = checkpoint.save(self.out, self.iteration, weights, state) if self.rank == 0 else None
        if self.world_size > 1:
            torch.distributed.barrier()
        self._saved_at = self.iteration
        return path

    # ---- pieces --------------------------------------------------------------------------------------------
    def text(self, texts: list[str]):
        return self.backbone.encode_prompts(texts)

    def empty_text(self, n: int):
        if self.empty is None:
            return None
        return TextEmbeddings(self.empty.hidden.expand(n, -1, -1), self.empty.pooled.expand(n, -1))

    def reward(self, latents: torch.Tensor, prompts: Prompts, combined: bool = False) -> torch.Tensor:
        """(B,) rewards of the decoded latents, or (B, K) per-reward columns (``reward.aggregate=zscore_sum``)
        unless ``combined`` (then their weighted sum)."""
        images = self.backbone.decode(latents)  # a video model's: (B, 3, F, H, W), scored frame by frame
        if self.multi_columns:
            matrix = video.per_video(self.task.reward_matrix, images, prompts)
            return matrix @ self.task.weights.to(matrix.device) if combined else matrix
        return video.per_video(self.task.reward, images, prompts)

    def reward_queue(self, combined: bool = False) -> RewardQueue:
        """Where a rollout submits each group's latents and prompts for their rewards (``reward.schedule``;
        ``combined`` as in :meth:`reward`)."""
        return RewardQueue(lambda latents, prompts: self.reward(latents, prompts, combined=combined),
                           self.reward_schedule, Prompts.cat)

    def evaluate(self) -> dict:
        """Every evaluation prompt (world: training and held-out) × ``eval_seeds`` fixed noise seeds, ODE samples:
        each score's mean and 95% interval (``fastgrpo.train.evaluate``); the result stays in ``last_eval``."""
        self.model.eval()
        try:
            self.last_eval = evaluation.evaluate(
                self.backbone, self.backbone.denoiser(self.model), self.task, self.sigmas, self.cfg.sampling,
                seeds=self.cfg.eval_seeds, batch=evaluation.batch_size(self.cfg), device=self.device, empty=self.empty,
                autocast=self.autocast)
        finally:
            self.model.train()
        return self.last_eval.metrics

    def _select(self, seed: int) -> tuple[Prompts, dict]:
        """Candidates, their ODE anchors, the EMA update and the kept prompts."""
        ada, cfg = self.cfg.adagrpo, self.cfg.sampling
        g = torch.Generator().manual_seed(seed)
        cand = self.train_prompts.take(torch.randperm(len(self.train_prompts), generator=g)[:ada.candidates])
        stats = {}
        if not (ada.curriculum or ada.fusion):
            keep = torch.arange(ada.keep)
        else:
            n = len(cand)
            noise = _noise(n, self.backbone.latent_shape, seed + 1).to(self.device)
            denoise = self.backbone.denoiser(self.model)
            with self.autocast():
                if ada.anchor_steps:  # a cheaper anchor: DPM-Solver++ 2M on a coarser grid
                    latents = sample_dpm(denoise, noise, sigmas(ada.anchor_steps, cfg.shift), self.text(cand.texts),
                                         self.empty_text(n), guidance=cfg.guidance)
                else:
                    latents = sample(denoise, noise, self.sigmas, self.text(cand.texts), self.empty_text(n),
                                     guidance=cfg.guidance, eta=cfg.eta, family=cfg.family).latents
            anchor = self.reward(latents, cand, combined=True)
            self.tracker.update(anchor)
            keep = self._pick(anchor, ada) if ada.curriculum else torch.arange(ada.keep)
            stats = {"anchor_reward": anchor.mean().item(), "ema_mean": self.tracker.mean.item()}
        return cand.take(keep), stats

    def step(self) -> dict:
        """One iteration, ``select → rollout → reward → advantage → update``; returns its metrics. Selection
        (AdaGRPO's curriculum) is the driver's; the rest is the method's (``fastgrpo.methods``)."""
        seed = self.cfg.seed * 1_000_003 + self.iteration * 7919 + self.rank * 104_729
        t0 = self._clock()
        kept, stats = self._select(seed)
        t_select = self._clock("select")
        batch = self.method.rollout(kept, seed)
        t_rollout = self._clock("rollout")
        rewards = batch.rewards
        if self.first_nonfinite({"rewards": rewards.values}) is not None:
            return self._nonfinite("rewards")
        adv = self.method.advantages(batch)
        t_adv = self._clock("advantage")
        result = self.method.update(batch, adv, seed)
        if isinstance(result, str):  # a non-finite loss or gradient: that minibatch's update was dropped
            return self._nonfinite(result)
        self.nonfinite_in_a_row = 0
        t_update = self._clock("update")
        read = {"reward": rewards.final.mean(), **result, "zero_spread_groups": adv.zero_spread_groups}
        values = torch.stack([v.detach().float().reshape(()).to(self.device) for v in read.values()]).tolist()
        metrics = dict(zip(read, values))  # one read-back for every metric of the iteration
        metrics["zero_spread_groups"] = int(metrics["zero_spread_groups"])
        peaks = {f"peak_{stage}_gib": gib for stage, gib in self.stage_peaks.items()}
        return {**metrics, **batch.info, "t_select": t_select - t0, "t_rollout": t_rollout - t_select,
                "t_advantage": t_adv - t_rollout, "t_update": t_update - t_adv, **peaks, **stats}

    def _pick(self, anchor: torch.Tensor, ada) -> torch.Tensor:
        """Kept candidates by ``adagrpo.selection``: nearest μ_ema (the curriculum), the easiest / hardest anchors,
        the nearest the batch median, or the first k of the random candidates (AdaGRPO's ablation)."""
        if ada.selection == "curriculum":
            return self.tracker.select(anchor, ada.keep).cpu()
        order = torch.argsort(anchor.cpu(), descending=True, stable=True)
        if ada.selection == "easiest":
            return order[:ada.keep]
        if ada.selection == "hardest":
            return order.flip(0)[:ada.keep]
        if ada.selection == "median":
            return torch.sort((anchor.cpu() - anchor.cpu().median()).abs(), stable=True).indices[:ada.keep]
        return torch.arange(ada.keep)

    def group_noise(self, group: int, seed: int) -> torch.Tensor:
        """A group's initial noise: independent per sample, or one draw shared by the group (DanceGRPO)."""
        noise = _noise(1 if self.cfg.sampling.shared_noise else group, self.backbone.latent_shape, seed)
        return noise.expand(group, *noise.shape[1:]).contiguous().to(self.device)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.model.autocast)

    def sync_grads(self, last: bool):
        """DDP / FSDP reduce gradients on the last backward of the iteration only."""
        return distributed.no_sync(self.trained, self.world_size, skip=not last)

    @contextlib.contextmanager
    def reference(self):
        """The KL reference: the frozen initial copy, or the LoRA model with its adapter off."""
        if self.reference_copy is not None:
            yield self.reference_copy
        else:
            with adapters_disabled(self.model):
                yield self.model

    def _clock(self, stage: str | None = None) -> float:
        """Seconds now; with ``sync_stages`` on CUDA the device is synchronised first, and the peak memory
        allocated since the previous boundary is kept as ``stage_peaks[stage]`` (GiB)."""
        if self.sync_stages and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            if stage is not None:
                self.stage_peaks[stage] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        return time.perf_counter()

    def first_nonfinite(self, values: dict[str, torch.Tensor]) -> str | None:
        """The first name whose tensor has a non-finite entry on any rank (so every rank skips the same iterations
        together): one flag vector, one all-reduce, one read."""
        flags = torch.stack([(~torch.isfinite(v.detach())).any() for v in values.values()]).to(torch.float32)
        if self.world_size > 1:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        return next((name for name, hit in zip(values, flags.tolist()) if hit), None)

    def _nonfinite(self, what: str) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_a_row += 1
        limit = self.cfg.optim.max_nonfinite
        if self.nonfinite_in_a_row >= limit:
            raise RuntimeError(f"non-finite {what} in {limit} iterations in a row (optim.max_nonfinite; last at "
                               f"iteration {self.iteration}); "
                               "stopping — lower optim.lr or check the reward")
        return {"skipped": what}

    # ---- driver --------------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        self._stop = True

    def run(self, progress: bool = True) -> list[dict]:
        cfg = self.cfg
        main = self.rank == 0
        progress = progress and main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out / "config.yaml")
            # the log restarts from the checkpoint's history: iterations a killed run logged after its last save are
            # run again on resume and would otherwise appear twice
            report.write_jsonl(self.out / "metrics.jsonl", self.history)
            self._wall_offset = self.history[-1].get("wall_s", 0.0) if self.history else 0.0
            self._wall_start = time.perf_counter()
            self._tracking = Tracking(cfg, self.out, config=to_dict(cfg),
                                      purge_step=self.history[-1]["iteration"] + 1 if self.history else 0)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            from tqdm import tqdm
            bar = tqdm(total=cfg.iterations, initial=self.iteration, disable=not progress, desc="fastgrpo train")
            # evaluation runs on rank 0; under FSDP on every rank (the forward gathers shards from all of them);
            # eval_every=0: never
            evaluates = cfg.eval_every > 0 and (main or (self.world_size > 1 and cfg.distributed == "fsdp"))
            if evaluates and self.iteration == 0 and not any("eval_train_reward" in h for h in self.history):
                first = {"iteration": 0, **self.evaluate()}
                if main:
                    self._log(first)
            while self.iteration < cfg.iterations and not self._stop:
                metrics = self.step()
                self.iteration += 1
                record = {"iteration": self.iteration, **metrics}
                if evaluates and (self.iteration % cfg.eval_every == 0 or self.iteration == cfg.iterations):
                    record.update(self.evaluate())
                if main:
                    self._log(record)
                bar.set_postfix(reward=f"{metrics.get('reward', float('nan')):.3f}")
                bar.update(1)
                if cfg.checkpoint_every > 0 and self.iteration % cfg.checkpoint_every == 0:  # 0: only at the end
                    self.save()
            bar.close()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self._saved_at != self.iteration:
            self.save()
        self.finish_save()
        if main:
            self._before_after()
            if self._tracking is not None:
                self._tracking.close()
            self._summary()
        return self.history

    def _log(self, record: dict) -> None:
        record["wall_s"] = self._wall_offset + time.perf_counter() - self._wall_start
        self.history.append(record)
        report.append_jsonl(self.out / "metrics.jsonl", record)
        if self._tracking is not None:
            self._tracking.scalars(record)
        if "eval_train_reward" in record:
            evals = [h for h in self.history if "eval_train_reward" in h]
            report.save_curve(evals, [k for k in record if k.startswith("eval_")], self.out / "reward_curve.png")
            images, labels, correct = self.last_eval.grid()
            grid = self.out / f"samples_{record['iteration']:05d}.png"
            report.save_grid(images, grid, prompts=labels, correct=correct)
            if self._tracking is not None:
                self._tracking.image("samples", grid, record["iteration"])
            if record["iteration"] == 0:
                self._keep_start_eval()

    def _keep_start_eval(self) -> None:
        """The iteration-0 evaluation, in memory and in ``START_EVAL`` (a resumed run draws before_after.png
        from it): seed-0 images as uint8 thumbnails, their labels and correctness, per-prompt scores."""
        images, labels, correct = self.last_eval.grid()
        self._start_eval = {"images": report.thumbnails(images), "labels": labels, "correct": correct,
                            "scores": {n: r.scores for n, r in self.last_eval.sets.items()}}
        atomic.save_torch(self.out / START_EVAL, self._start_eval)

    def _load_start_eval(self) -> dict | None:
        if self._start_eval is None and (self.out / START_EVAL).is_file():
            self._start_eval = torch.load(self.out / START_EVAL, weights_only=True)
        return self._start_eval

    def _before_after(self) -> None:
        """``before_after.png``: the iteration-0 samples beside the final ones — same prompts, same noise."""
        start = self._load_start_eval()
        if start is None or self.last_eval is None or self.iteration == 0:
            return
        images, labels, correct = self.last_eval.grid()
        if labels != start["labels"]:
            return  # another evaluation set (a changed config): nothing to pair
        path = self.out / "before_after.png"
        report.save_before_after(start["images"], report.thumbnails(images), path,
                                 prompts=labels, correct_before=start["correct"], correct_after=correct,
                                 titles=("pretrained (iteration 0)", f"final (iteration {self.iteration})"))
        if self._tracking is not None:
            self._tracking.image("before_after", path, self.iteration)

    def _summary(self) -> None:
        evals = [h for h in self.history if "eval_train_reward" in h]
        if not evals:
            return
        first, last = evals[0], evals[-1]
        start = self._load_start_eval()
        paired = {}
        if start is not None and self.last_eval is not None and last is not first:
            for name, result in self.last_eval.sets.items():
                if name in start["scores"]:
                    paired.update({f"eval_{name}_{k}": v for k, v in
                                   evaluation.paired_difference(start["scores"][name], result.scores).items()})
        print(f"\n{'metric':<26}{'start':>8}{'end':>8}  {'end 95% CI':<17}{'end − start, paired 95% CI':<26}")
        for key in (k for k in last if k.startswith("eval_") and not k.endswith(("_lo", "_hi"))):
            ci = (f"[{last[key + '_lo']:.3f}, {last[key + '_hi']:.3f}]" if key + "_lo" in last else "-")
            diff = paired.get(key)
            delta = (f"{diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}]" if diff and diff[1] is not None else "-")
            print(f"{key:<26}{first.get(key, float('nan')):>8.3f}{last[key]:>8.3f}  {ci:<17}{delta}")
        steps = [h for h in self.history if "t_rollout" in h]
        if steps:
            parts = {k: sum(h[k] for h in steps) / len(steps) for k in ("t_select", "t_rollout", "t_advantage",
                                                                         "t_update")}
            print("seconds per iteration: " + ", ".join(f"{k[2:]} {v:.2f}" for k, v in parts.items())
                  + f"; per evaluation {sum(h['t_eval'] for h in evals if 't_eval' in h) / len(evals):.1f}")
        print(f"outputs in {self.out}")


def train(config: TrainConfig, resume: str | None = None, progress: bool = True) -> list[dict]:
    """Run training; under ``torchrun`` (WORLD_SIZE > 1) initialise the process group first (NCCL on CUDA, gloo on
    CPU) and tear it down after."""
    import os

    started = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if config.device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        started = True
    try:
        return Trainer(config, resume).run(progress)
    finally:
        if started:
            torch.distributed.destroy_process_group()

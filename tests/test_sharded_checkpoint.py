"""Sharded checkpoints under FSDP2 (full fine-tuning on several ranks): each of 2 gloo ranks writes its own part
through torch.distributed.checkpoint, nothing is gathered (in the background by default, blocking with
``checkpoint_async=false``: the same bytes); resuming at world size 2 continues bit for bit (the
weights after iteration 2 equal an uninterrupted run's), and at world size 1 the weights and the AdamW state loaded
equal what the two ranks held when they saved. ``fastgrpo eval`` reads the shards on one process; LoRA runs keep
one safetensors file."""
import pytest
import torch
import torch.multiprocessing as mp

from fastgrpo.train import Trainer, checkpoint as ckpt, distributed, load_config

TINY = ("sampling.steps=3", "window.size=1", "adagrpo.candidates=4", "adagrpo.keep=2", "group_size=2",
        "eval_every=0", "checkpoint_every=1", "model.lora_rank=0", "distributed=fsdp")


def _worker(rank, init, out, iterations, resume, result, extra):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        trainer = Trainer(load_config(None, TINY + (f"iterations={iterations}", f"out_dir={out}", *extra)),
                          resume=resume)
        assert trainer.sharded
        trainer.run(progress=False)
        weights = distributed.full_weights(trainer.trained, trainer.model, False, all_ranks=True)
        optim = distributed.optimizer_state(trainer.trained, trainer.optimizer)
        if rank == 0:
            result["weights"], result["optim"] = weights, optim["state"]
    finally:
        torch.distributed.destroy_process_group()


def _spawn(tmp_path, tag, out, iterations, resume=None, extra=()):
    result = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / f"init-{tag}"), str(out), iterations, resume and str(resume), result,
                            tuple(extra)), nprocs=2)
    return dict(result)


def test_sharded_checkpoints_resume_at_two_ranks_and_at_one(tmp_path):
    full = _spawn(tmp_path, "full", tmp_path / "full", 2)  # checkpoint_async (the default): written in background
    half = _spawn(tmp_path, "half", tmp_path / "half", 1, extra=["checkpoint_async=false"])
    saved = ckpt.latest(tmp_path / "half")
    parts = sorted(p.name for p in (saved / ckpt.SHARDS).iterdir())
    assert "__0_0.distcp" in parts and "__1_0.distcp" in parts and ".metadata" in parts  # each rank wrote its part
    assert not (saved / "model.safetensors").exists()

    # world size 1: the weights and the optimiser state the two ranks held at iteration 1
    single = Trainer(load_config(None, TINY + ("iterations=2", f"out_dir={tmp_path / 'half'}")),
                     resume=str(tmp_path / "half"))
    assert not single.sharded and single.iteration == 1
    state = single.model.state_dict()
    assert set(state) == set(half["weights"]) and all(torch.equal(state[k], half["weights"][k]) for k in state)
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    optim = get_optimizer_state_dict(single.model, single.optimizer)["state"]
    assert set(optim) == set(half["optim"])
    for name, values in half["optim"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(optim[name][key]), torch.as_tensor(values[key])), (name, key)

    # the background save of iteration 1 holds iteration 1's weights, though iteration 2 trained on while it was
    # being written: equal to the blocking save's
    first = min(ckpt.latest(tmp_path / "full").parent.glob("ckpt-000001-*"))
    ckpt.load_shards(first, single.model)
    state = single.model.state_dict()
    assert all(torch.equal(state[k], half["weights"][k]) for k in state)
    assert not any((tmp_path / "full").glob(ckpt.TMP_PREFIX + "*"))  # every save published

    # world size 2: the continuation equals the uninterrupted run
    resumed = _spawn(tmp_path, "resumed", tmp_path / "half", 2, resume=tmp_path / "half")
    assert all(torch.equal(resumed["weights"][k], full["weights"][k]) for k in full["weights"])

    # fastgrpo eval's loader reads the shards on one process
    from fastgrpo.train.evaluate import load_target
    trainer, iteration, _ = load_target(str(tmp_path / "half"))
    assert iteration == 2 and all(torch.equal(trainer.model.state_dict()[k], full["weights"][k])
                                  for k in full["weights"])


def test_lora_and_single_process_runs_keep_one_safetensors_file(tmp_path):
    trainer = Trainer(load_config(None, TINY[:-2] + ("iterations=1", f"out_dir={tmp_path}")))
    assert not trainer.sharded
    trainer.run(progress=False)
    assert (ckpt.latest(tmp_path) / "model.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="state.pt is missing"):
        (ckpt.latest(tmp_path) / "state.pt").unlink()
        ckpt.load(tmp_path)

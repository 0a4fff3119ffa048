"""``fastgrpo pretrain-world`` writes where the user says; replacing the shipped weights takes an explicit flag."""
import pytest
import torch

from fastgrpo import cli
from fastgrpo.world import WEIGHTS, World
from fastgrpo.world import pretrain as pretrain_module


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(pretrain_module, "pretrain", lambda out, **kw: seen.append((out, kw)))
    return seen


def test_pretrain_world_needs_out_or_replace_shipped(calls, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["pretrain-world"])
    assert exit_.value.code == 2 and "--out" in capsys.readouterr().err and not calls
    with pytest.raises(SystemExit):
        cli.main(["pretrain-world", "--out", "w.safetensors", "--replace-shipped"])
    assert "not allowed with" in capsys.readouterr().err and not calls


def test_pretrain_world_refuses_the_shipped_path_given_as_out(calls, capsys):
    with pytest.raises(SystemExit):
        cli.main(["pretrain-world", "--out", str(WEIGHTS)])
    assert "--replace-shipped" in capsys.readouterr().err and not calls
    with pytest.raises(SystemExit):
        cli.main(["pretrain-world", "--out", "w.safetensors", "--steps", "0"])
    assert "--steps must be >= 1" in capsys.readouterr().err and not calls
    with pytest.raises(SystemExit):
        cli.main(["pretrain-world", "--out", "w.safetensors", "--confusion-steps", "-1"])
    assert "--confusion-steps must be >= 0" in capsys.readouterr().err and not calls


def test_pretrain_world_passes_the_target_on(calls, tmp_path):
    assert cli.main(["pretrain-world", "--out", str(tmp_path / "w.safetensors"), "--steps", "3",
                     "--confusion-steps", "0"]) == 0
    assert calls[-1] == (str(tmp_path / "w.safetensors"), {"steps": 3, "confusion_steps": 0, "replace_shipped": False})
    assert cli.main(["pretrain-world", "--replace-shipped"]) == 0
    assert calls[-1] == (WEIGHTS, {"steps": 4800, "confusion_steps": 1200, "replace_shipped": True})


def test_pretrain_refuses_the_shipped_weights_without_the_flag_and_writes_out(tmp_path):
    with pytest.raises(ValueError, match="replace_shipped"):
        pretrain_module.pretrain(WEIGHTS, steps=1)
    out = tmp_path / "sub" / "w.safetensors"
    pretrain_module.pretrain(out, steps=1, confusion_steps=1, batch=2)
    assert World.load(path=out) is not None
    for bad, key in (({"confusion_steps": -1}, "confusion_steps"), ({"confusion_noise": 1.5}, "confusion_noise"),
                     ({"caption_noise": -0.1}, "caption_noise")):
        with pytest.raises(ValueError, match=key):
            pretrain_module.pretrain(out, steps=1, batch=2, **bad)


def test_noisy_captions_name_only_training_combinations_at_the_stated_rate():
    from fastgrpo.world import shapes
    gen = torch.Generator().manual_seed(0)
    pick = torch.randint(0, len(shapes.TRAIN), (20000,), generator=gen)
    truth = torch.tensor(shapes.TRAIN)[pick]
    assert torch.equal(pretrain_module.noisy_captions(pick, 0.0, gen), truth)
    for p in (0.6, 1.0):
        said = pretrain_module.noisy_captions(pick, p, gen)
        assert torch.equal(said[:, [0, 2]], truth[:, [0, 2]])  # only the shape word changes
        assert all(tuple(c) in set(shapes.TRAIN) for c in said.tolist())
        kept = (said[:, 1] == truth[:, 1]).float().mean().item()
        options = {(c, p_) : sum((c, s, p_) in shapes.TRAIN for s in range(len(shapes.SHAPES)))
                   for c, _, p_ in shapes.TRAIN}
        n = torch.tensor([options[(c, p_)] for c, _, p_ in truth.tolist()], dtype=torch.float64)
        expected = (1 - p + p / n).mean().item()  # kept when not noisy, or noisy and the draw hits the truth
        assert abs(kept - expected) < 0.015, (p, kept, expected)

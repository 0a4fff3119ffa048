"""``fastgrpo pretrain-world`` writes where the user says; replacing the shipped weights takes an explicit flag."""
import pytest

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


def test_pretrain_world_passes_the_target_on(calls, tmp_path):
    assert cli.main(["pretrain-world", "--out", str(tmp_path / "w.safetensors"), "--steps", "3"]) == 0
    assert calls[-1] == (str(tmp_path / "w.safetensors"), {"steps": 3, "replace_shipped": False})
    assert cli.main(["pretrain-world", "--replace-shipped"]) == 0
    assert calls[-1] == (WEIGHTS, {"steps": 2400, "replace_shipped": True})


def test_pretrain_refuses_the_shipped_weights_without_the_flag_and_writes_out(tmp_path):
    with pytest.raises(ValueError, match="replace_shipped"):
        pretrain_module.pretrain(WEIGHTS, steps=1)
    out = tmp_path / "sub" / "w.safetensors"
    pretrain_module.pretrain(out, steps=1, batch=2)
    assert World.load(path=out) is not None

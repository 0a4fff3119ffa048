"""The checkout never shadows an installed distribution, and the package installs like a user installs it (issue 11).

transformers 5.25 started importing Hugging Face's ``kernels`` distribution; a regular package ``kernels/`` at the
repository root shadowed it whenever the root was on ``sys.path`` (``python -m pytest``, ``torchrun -m ...``), and
every import of transformers failed there. These tests run from the root the way users do."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHORT = ["iterations=1", "group_size=2", "sampling.steps=4", "window.size=2", "adagrpo.candidates=2",
         "adagrpo.keep=1", "eval_every=1000", "eval_seeds=1", "checkpoint_every=1000"]

# For every top-level module name an installed distribution provides, where `import name` resolves from the root
# (cwd first on sys.path, as with `python -c` / `python -m`).
_WHERE = r"""
import importlib.metadata as md, importlib.util, json, sys
out = {}
for name, dists in md.packages_distributions().items():
    if not name.isidentifier() or 'fastgrpo' in dists:
        continue
    try:
        spec = importlib.util.find_spec(name)
    except Exception as err:  # a broken distribution is not our concern here
        continue
    if spec is not None:
        out[name] = [spec.origin or '', *list(spec.submodule_search_locations or [])]
print(json.dumps(out))
"""


def _env(**extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    env.pop("PYTHONPATH", None)
    return env


def _python(code: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_no_top_level_name_in_the_repo_shadows_an_installed_distribution():
    import importlib.metadata as md

    installed = {name for name, dists in md.packages_distributions().items() if "fastgrpo" not in dists}
    # regular packages and modules at the root are importable by that name from the root: none may equal a name
    # an installed distribution provides
    regular = {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert not regular & installed, f"repository names that shadow installed distributions: {regular & installed}"
    # and every installed name resolves outside the repository when imported from the root (namespace folders such
    # as kernels/ lose to a regular package found later on sys.path)
    where = json.loads(_python(_WHERE).stdout)
    shadowed = {name: paths for name, paths in where.items()
                if any(p and Path(p).resolve().is_relative_to(ROOT) and ".venv" not in Path(p).parts for p in paths)}
    assert not shadowed, f"resolved inside the repository: {shadowed}"


def test_transformers_and_the_cli_import_from_the_repository_root():
    _python("from transformers import CLIPModel; from diffusers import SD3Transformer2DModel; "
            "import fastgrpo.kernels.flow_step")
    done = subprocess.run([sys.executable, "-m", "fastgrpo.cli", "train", "--help"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--config" in done.stdout, done.stderr[-2000:]


def test_torchrun_two_processes_from_the_repository_root(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "fastgrpo.cli", "train", *SHORT,
                           f"out_dir={out}"], cwd=ROOT, env=_env(FASTGRPO_BACKEND="torch"), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "loss" in r] == [1]


def _copy_tree(dest: Path) -> Path:
    """The working tree without build outputs (a build in place would touch the editable install's extension)."""
    ignore = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "runs", "*.egg-info", "__pycache__", "*.so",
                                    ".pytest_cache", ".hypothesis")
    shutil.copytree(ROOT, dest, symlinks=True, ignore=ignore)
    return dest


def test_wheel_builds_cleanly_and_runs_the_main_job_outside_the_repository(tmp_path):
    """`pip wheel .` (no setuptools deprecation warnings), installed into a fresh venv outside the repository:
    `fastgrpo train` with no --config runs the packaged default on the shipped weights."""
    source = _copy_tree(tmp_path / "src")
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w",
                            str(wheels), str(source)], env=_env(FASTGRPO_BUILD_EXT="off"), capture_output=True,
                           text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    log = build.stdout + build.stderr
    assert "Deprecat" not in log and "deprecated" not in log, log[-3000:]
    (wheel,) = wheels.glob("fastgrpo-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("fastgrpo/configs/default.yaml", "fastgrpo/world/weights/world.safetensors",
                   "fastgrpo/kernels/flow_step.py", "fastgrpo/kernels/__init__.py"):
        assert needed in names, needed
    assert not any(n.startswith(("kernels/", "tests/", "benchmarks/")) for n in names)

    # a fresh venv that sees this environment's dependencies (a .pth to its site-packages; .pth files there, such
    # as the editable install's finder, are not processed) and the wheel's fastgrpo first
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    site = next((env_dir / "lib").glob("python*/site-packages"))
    import sysconfig

    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site),
                              str(wheel)], env=_env(), capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import fastgrpo, fastgrpo.kernels.flow_step; print(fastgrpo.__file__)"],
                           cwd=work, env=_env(), capture_output=True, text=True, timeout=120)
    assert where.returncode == 0 and Path(where.stdout.strip()).is_relative_to(site), where.stderr[-2000:]
    run = subprocess.run([str(python), "-m", "fastgrpo.cli", "train", *SHORT, "out_dir=out"], cwd=work,
                         env=_env(FASTGRPO_BACKEND="torch"), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (work / "out" / "latest").is_file() and (work / "out" / "metrics.jsonl").is_file()
    saved = (work / "out" / "config.yaml").read_text()
    assert "kind: world" in saved

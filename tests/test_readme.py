"""Every command the README shows runs (issue 11). The README's ```bash blocks are parsed; each command must match
exactly one entry of ``RUNNERS`` (a new command without a runner fails ``test_every_readme_command_has_a_runner``),
and each runner executes it in a temporary directory: model paths (``/models/...``) become tiny pipelines and
reward models built in code, and the run is shrunk by overrides appended to the command (never by rewriting it).
Commands that need a GPU are listed in ``GPU_ONLY`` and say so in the README."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
VENV = Path(sys.prefix)
# every run: a short job on the world or a tiny pipeline, evaluations and checkpoints at the end only
SHORT = ["iterations=1", "group_size=2", "sampling.steps=4", "window.size=2", "adagrpo.candidates=2", "adagrpo.keep=1",
         "eval_every=1000", "eval_seeds=1", "checkpoint_every=1000"]
TINY_REAL = SHORT + ["model.resolution=32", "model.max_sequence_length=16", "device=cpu", "model.dtype=fp32",
                     "model.autocast=false", "data.eval_count=2", "model.gradient_checkpointing=false"]
GPU_ONLY = ("make test-gpu",)
CPU_BENCHMARKS = ("flow_step", "dpm_solver", "advantages", "preprocess", "trainer", "compat", "default_job",
                  "attention", "reward_schedule")


def readme_commands() -> list[str]:
    """The command lines of the README's ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def _env(**extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", FASTGRPO_BACKEND="torch", PATH=f"{BIN}{os.pathsep}"
               f"{os.environ.get('PATH', '')}", OMP_NUM_THREADS="1", **extra)
    env.pop("TRITON_INTERPRET", None)
    return env


def _run(command: str, cwd: Path, extra: list[str] = (), timeout: int = 900, **env) -> subprocess.CompletedProcess:
    argv = shlex.split(command) + list(extra)
    if argv[0] in ("fastgrpo", "torchrun", "python", "python3", "pip"):
        argv[0] = str(BIN / ("python" if argv[0] == "python3" else argv[0]))
    done = subprocess.run(argv, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def _make(target_and_vars: str, cwd: Path = ROOT, timeout: int = 900) -> subprocess.CompletedProcess:
    """`make` on the repository's Makefile with this test's venv, never reinstalling it (-o .installed)."""
    argv = ["make", "-f", str(ROOT / "Makefile"), "-C", str(ROOT), f"VENV={VENV}", "-o", f"{VENV}/.installed",
            *shlex.split(target_and_vars)]
    done = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"make {target_and_vars}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def _prompts(directory: Path, name: str = "prompts.txt") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a red cube on a table\na blue ball in the grass\na green tree at night\n")
    return path


def _model_dirs(tmp: Path, command: str) -> str:
    """Replace every /models/... directory in ``command`` by a tiny stand-in of the same kind, built here."""
    from fastgrpo.models.tiny import save_tiny_pipeline

    def tiny(match):
        name = match.group(0)
        target = tmp / name.strip("/").replace("/", "_")
        if target.exists():
            return str(target)
        if "stable-diffusion-3" in name:
            save_tiny_pipeline("sd3", target)
        elif "FLUX" in name:
            save_tiny_pipeline("flux", target)
        elif "PickScore" in name or "CLIP" in name:
            from test_rewards import save_clip
            save_clip(target)
        elif "hps" in name.lower():
            from test_rewards import open_clip_state_dict, tiny_config, tiny_tokenizer
            tokenizer, vocab, eos = tiny_tokenizer()
            target.mkdir(parents=True)
            tiny_config(vocab, eos).save_pretrained(target)
            tokenizer.save_pretrained(target)
            torch.save({"state_dict": open_clip_state_dict(vocab, seed=0)}, target / "HPS_v2.1_compressed.pt")
        else:
            raise AssertionError(f"no tiny stand-in for {name}")
        return str(target)

    return re.sub(r"/models/[\w.\-]+", tiny, command)


# ---- runners: each takes (command, tmp_path) ----------------------------------------------------------------
def run_make_train(command, tmp):
    out = tmp / "run"
    _make(f"train ARGS={shlex.quote(' '.join(SHORT + [f'out_dir={out}']))}")
    assert (out / "metrics.jsonl").is_file() and (out / "latest").is_file()


def run_make_install_step(command, tmp):
    """The install commands are `make install`'s recipe, which `make test` (CI) runs on a fresh venv: check that
    each README line is one of the recipe's lines."""
    planned = _make("-n -B install VENV=.venv", timeout=60).stdout
    lines = {re.sub(r"\s+", " ", line.split("||")[-1].replace(" -q ", " ").replace("2>/dev/null", "")).strip()
             for line in planned.splitlines()}
    want = command.replace(".venv/bin/pip ", ".venv/bin/python -m pip ")
    assert want in lines, f"{command!r} is not a step of `make install`: {sorted(lines)}"


def run_make_test(command, tmp):
    """CI runs exactly `make test`; the tests run in pytest-xdist workers, TEST_WORKERS of them (0: one process)."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^\s*(time )?make test\s*$", ci, flags=re.M), "CI must run exactly the README's test command"
    planned = _make("-n test TEST_WORKERS=0", timeout=60).stdout
    assert re.search(r"TRITON_INTERPRET=1 \S+ -m pytest -q -n 0 --dist worksteal tests", planned), planned


def run_make_test_slow(command, tmp):
    """`make test-slow`: the slow-marked tests with FASTGRPO_SLOW=1 (each is also collected, and skipped, by
    `make test`); not run here — it is what CI leaves out."""
    planned = _make("-n -B test-slow VENV=.venv", timeout=60).stdout
    assert re.search(r"FASTGRPO_SLOW=1 .*pytest -q -m slow tests", planned), planned
    done = subprocess.run([str(BIN / "python"), "-m", "pytest", "-q", "--collect-only", "-m", "slow",
                           "tests/test_compile.py"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "test_compiled_blocks_under_fsdp2_match_eager" in done.stdout, done.stdout[-2000:]


def run_make_newest(command, tmp):
    """`make clean && make test LOCK=`: the same install without the lock's constraints."""
    planned = _make("-n -B install VENV=.venv LOCK=", timeout=60).stdout
    installs = [line for line in planned.splitlines() if "pip install" in line]
    assert len(installs) == 3 and not any(re.search(r"pip install.* -c ", line) or "lock.txt" in line for line in installs), installs
    assert "rm -rf" in _make("-n clean", timeout=60).stdout


def run_make_lock(command, tmp):
    out = tmp / "lock.txt"
    _make(f"lock LOCK_OUT={out}", timeout=600)
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", out.read_text(), flags=re.M))
    assert "torch" not in pins and pins.get("triton") == "3.7.1" and "transformers" in pins and "diffusers" in pins


def run_make_demo(command, tmp):
    assert "ratio" in _make("demo", timeout=600).stdout.lower()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _reward_server(command: str, tmp: Path):
    """``command`` (a `fastgrpo serve-reward ...` line, model paths already tiny) started on a free port; yields
    its URL once /health answers (bounded wait), then stops it."""
    import urllib.request

    port = _free_port()
    argv = shlex.split(re.sub(r"--port \d+", "", command)) + ["--port", str(port)]
    argv[0] = str(BIN / "fastgrpo")
    server = subprocess.Popen(argv, cwd=tmp, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # ≤ 120 s: the server imports torch and builds the reward first
            if server.poll() is not None:
                raise AssertionError(f"{command} exited: {server.stdout.read()[-3000:]}")
            try:
                urllib.request.urlopen(url + "/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError(f"{command}: no answer on {url}/health within 120 s")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def run_serve_reward(command, tmp):
    """`fastgrpo serve-reward NAME ...`: served, and a remote:NAME client scores through it."""
    from fastgrpo.rewards import build_reward

    name = shlex.split(command)[2]
    with _reward_server(_model_dirs(tmp, command), tmp) as url:
        scores = build_reward(f"remote:{name}", path=url)(torch.rand(2, 3, 32, 32), ["a red cube", "a blue ball"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def run_fastgrpo_train(command, tmp):
    """`fastgrpo train ...` on the world, a shipped recipe, or a tiny pipeline; with a remote:NAME reward, against
    the README's `fastgrpo serve-reward NAME` line started first."""
    _prompts(tmp, "prompts/train.txt")
    _prompts(tmp)
    command = _model_dirs(tmp, command)
    served = re.search(r"reward\.paths=remote:(\w+)=(\S+)", command)
    if served:
        serve = next(c for c in readme_commands() if c.startswith(f"fastgrpo serve-reward {served.group(1)} "))
        with _reward_server(_model_dirs(tmp, serve), tmp) as url:
            _run(command.replace(served.group(2), url), tmp, TINY_REAL + [f"out_dir={tmp / 'run'}"])
        assert (tmp / "run" / "latest").is_file()
        return
    if "model.path=tiny-sd3" in command:  # the README's tiny-pipeline pair: the line before writes it
        from fastgrpo.models.tiny import save_tiny_pipeline
        save_tiny_pipeline("sd3", tmp / "tiny-sd3")
    extra = SHORT if "model.kind" not in command and "--config sd35m" not in command and "flux" not in command \
        else TINY_REAL
    _run(command, tmp, extra + [f"out_dir={tmp / 'run'}"])
    assert (tmp / "run" / "latest").is_file()


def run_torchrun(command, tmp):
    """The README's torchrun lines, on 2 gloo processes of this machine."""
    _prompts(tmp, "prompts/train.txt")
    command = _model_dirs(tmp, command.replace("--nproc_per_node 8", "--nproc_per_node 2"))
    _run(command, tmp, TINY_REAL + [f"out_dir={tmp / 'run'}"])
    assert (tmp / "run" / "latest").is_file()


def run_tiny_pipeline(command, tmp):
    _run(command, tmp)
    assert (tmp / "tiny-sd3" / "model_index.json").is_file()


def run_on_a_run(command, tmp):
    """`fastgrpo sample|eval runs/default ...` on a short run written there first."""
    _run("fastgrpo train", tmp, SHORT + ["out_dir=runs/default"])
    _run(command, tmp)
    if " sample " in f" {command} ":
        out = re.search(r"--out (\S+)", command)
        assert (tmp / (out.group(1) if out else "samples.png")).is_file()
    else:
        result = json.loads((tmp / re.search(r"--out (\S+)", command).group(1)).read_text())
        flat = json.dumps(result)
        for key in ("eval_train_correct", "eval_heldout_correct", "eval_train_correct_lo", "eval_train_correct_hi"):
            assert key in flat, (key, flat[:500])


def run_config(command, tmp):
    """`fastgrpo config ...`: the resolved config loads back equal; --keys lists every key."""
    from fastgrpo.train import load_config
    from fastgrpo.train.config import describe

    done = _run(command, tmp)
    if "--keys" in command:
        assert done.stdout == describe() and "window.size: int, >= 1 = 4" in done.stdout
        return
    (tmp / "resolved.yaml").write_text(done.stdout)
    recipe = re.search(r"--config (\S+)", command)
    overrides = tuple(w for w in command.split() if "=" in w and not w.startswith("-"))
    assert load_config(str(tmp / "resolved.yaml")) == load_config(recipe and recipe.group(1), overrides)


def run_bench(command, tmp):
    """`fastgrpo bench [name] [--quick]`, quick, into a temporary folder: the named benchmark, or every one in one
    process (trainer_sd35m skips itself without a GPU); each CPU benchmark writes its results."""
    names = re.findall(r"bench (\w+)", command)
    _run(f"fastgrpo bench {' '.join(names)} --quick --out {tmp}", ROOT, timeout=900)
    for name in names or CPU_BENCHMARKS:
        assert (tmp / f"{name}.json").is_file() and (tmp / f"{name}.md").is_file(), name


def run_help(command, tmp):
    """Scripts the README shows with arguments: their --help runs from the repository root (each argument the
    README passes is one the script knows)."""
    module = re.search(r"-m (\S+)", command).group(1)
    done = _run(f"python -m {module} --help", ROOT)
    for flag in re.findall(r"(--[\w-]+)", command):
        assert flag in done.stdout, f"{module} --help does not know {flag}"


RUNNERS = [
    (r"^make train$", run_make_train),
    (r"^make test$", run_make_test),
    (r"^make test-slow$", run_make_test_slow),
    (r"^make clean && make test LOCK=$", run_make_newest),
    (r"^make lock$", run_make_lock),
    (r"^make demo$", run_make_demo),
    (r"^(python3 -m venv \.venv|\.venv/bin/(pip|python -m pip) install .*)$", run_make_install_step),
    (r"^fastgrpo train\b.*$", run_fastgrpo_train),
    (r"^torchrun .* -m fastgrpo\.cli train .*$", run_torchrun),
    (r"^python -c \"from fastgrpo\.models\.tiny import .*$", run_tiny_pipeline),
    (r"^fastgrpo (sample|eval) runs/default\b.*$", run_on_a_run),
    (r"^fastgrpo config\b.*$", run_config),
    (r"^fastgrpo serve-reward \w+\b.*$", run_serve_reward),
    (r"^fastgrpo bench( \w+)?( --quick)?$", run_bench),
    (r"^python -m benchmarks\.\w+ .*$", run_help),
]


def _runner(command: str):
    hits = [fn for pattern, fn in RUNNERS if re.match(pattern, command)]
    return hits


def test_every_readme_command_has_a_runner():
    commands = readme_commands()
    assert len(commands) >= 10
    for command in commands:
        if command in GPU_ONLY:
            continue
        assert len(_runner(command)) == 1, f"README command without exactly one runner in tests/test_readme.py: " \
                                           f"{command!r}"


def test_gpu_only_commands_say_so_in_the_readme():
    text = README.read_text()
    for command in GPU_ONLY:
        line = next(line for line in text.splitlines() if line.strip().startswith(command))
        assert "GPU" in line or "CUDA" in line, line


@pytest.mark.parametrize("command", [c for c in readme_commands() if c not in GPU_ONLY])
def test_readme_command_runs(command, tmp_path):
    (runner,) = _runner(command)
    if runner is run_make_lock and shutil.which("make") is None:
        pytest.fail("make is not installed")
    runner(command, tmp_path)

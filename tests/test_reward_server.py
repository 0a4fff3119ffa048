"""Rewards as services: ``fastgrpo serve-reward`` (Starlette on uvicorn, started here on 127.0.0.1 inside each test)
and its ``remote:NAME`` client — the same scores as the in-process scorer on the same uint8 images, requests that
arrive together scored in one call, malformed payloads and wrong tokens rejected without stopping the server, a
killed server or a wrong answer an error naming the URL — and the ``vlm_judge`` client against a small fake
OpenAI-compatible server."""
import json
import math
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from starlette.applications import Starlette  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from fastgrpo.cli import main as cli  # noqa: E402
from fastgrpo.rewards import build_reward  # noqa: E402
from fastgrpo.rewards import wire  # noqa: E402
from fastgrpo.rewards.remote import http_json  # noqa: E402
from fastgrpo.rewards.serve import make_app  # noqa: E402
from fastgrpo.train.overlap import resolve_schedule  # noqa: E402
from test_rewards import save_clip  # noqa: E402


@contextmanager
def running(app):
    """``app`` served on a free 127.0.0.1 port in a thread; stopped (bounded waits) on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    else:
        raise RuntimeError("the test server did not start within 10 s")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _images(b=5, seed=0, h=40, w=48):
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(b, 3, 5, 6, generator=g), size=(h, w), mode="bilinear")
    return (0.7 * smooth + 0.3 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)


def _post(url, body, token=None):
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_remote_scores_equal_the_in_process_scorer_on_the_same_images():
    local = build_reward("jpeg_compressibility")
    with running(make_app(local, "jpeg_compressibility")) as (url, _):
        remote = build_reward("remote:jpeg_compressibility", path=url, batch_size=3)  # two requests
        images = _images()
        assert torch.equal(remote(images), local(wire.to_uint8(images)))


def test_a_prompt_reward_gets_its_prompts(tmp_path):
    save_clip(tmp_path)
    local = build_reward("clip_score", path=str(tmp_path), precision="fp32")
    prompts = ["a red cat", "a blue dog", "a cat", "a green square", "a dog"]
    with running(make_app(local, "clip_score")) as (url, _):
        remote = build_reward("remote:clip_score", path=url)
        assert remote.needs_prompts
        images = _images()
        torch.testing.assert_close(remote(images, prompts), local(wire.to_uint8(images), prompts), rtol=0, atol=0)
        with pytest.raises(ValueError, match="needs one prompt per image"):
            remote(images, None)


class Gated:
    """A scorer whose first call waits for ``gate``: requests sent meanwhile queue up and are batched."""
    name, needs_prompts = "gated", False

    def __init__(self):
        self.entered, self.gate, self.sizes = threading.Event(), threading.Event(), []
        self.inner = build_reward("jpeg_compressibility")

    def __call__(self, images, prompts=None):
        if not self.sizes:
            self.entered.set()
            self.gate.wait(timeout=20)
        self.sizes.append(images.shape[0])
        return self.inner(images)


def test_requests_that_arrive_together_are_scored_in_one_call():
    scorer = Gated()
    app = make_app(scorer, "gated")
    batches = [_images(2, seed=s) for s in range(5)]
    with running(app) as (url, _):
        results = [None] * len(batches)

        def ask(i):
            results[i] = http_json(url + "/score", wire.encode_request(batches[i], None), timeout=30, retries=0,
                                   backoff=0)

        first = threading.Thread(target=ask, args=(0,))
        first.start()
        assert scorer.entered.wait(timeout=20)  # the first request is being scored (held at the gate)
        rest = [threading.Thread(target=ask, args=(i,)) for i in range(1, len(batches))]
        for t in rest:
            t.start()
        for _ in range(500):  # until the four are queued behind the gated first call
            if app.state.batcher._queue.qsize() == len(rest):
                break
            time.sleep(0.01)
        scorer.gate.set()
        for t in [first, *rest]:
            t.join(timeout=30)
    assert scorer.sizes == [2, 8]  # the first request alone, the four waiting ones together
    for batch, answer in zip(batches, results):
        expected = scorer.inner(wire.to_uint8(batch))
        torch.testing.assert_close(wire.decode_scores(answer, 2, "test"), expected, rtol=1e-6, atol=1e-6)


def test_malformed_requests_and_wrong_tokens_are_rejected_and_the_server_goes_on(monkeypatch):
    local = build_reward("jpeg_compressibility")
    with running(make_app(local, "jpeg_compressibility", token="s3cret")) as (url, _):
        status, answer = _post(url + "/score", b"not a safetensors file", token="s3cret")
        assert status == 400 and "not a safetensors file" in answer["error"]
        from safetensors.torch import save
        status, answer = _post(url + "/score", save({"images": torch.rand(2, 3, 8, 8)}), token="s3cret")
        assert status == 400 and "must be uint8" in answer["error"]
        body = save({"images": torch.zeros(2, 3, 8, 8, dtype=torch.uint8)}, metadata={"prompts": '["one"]'})
        status, answer = _post(url + "/score", body, token="s3cret")
        assert status == 400 and "1 prompts for 2 images" in answer["error"]
        status, answer = _post(url + "/score", wire.encode_request(_images(2), None), token="wrong")
        assert status == 401
        with pytest.raises(RuntimeError, match=f"reward server {url}/health rejected the request \\(401\\)"):
            build_reward("remote:jpeg_compressibility", path=url)  # no token in the environment
        monkeypatch.setenv("FASTGRPO_REWARD_TOKEN", "s3cret")
        remote = build_reward("remote:jpeg_compressibility", path=url)
        assert remote(_images(2)).shape == (2,)  # still serving after the bad requests


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole():
    """413 for a declared Content-Length over the limit and for a chunked body (no length) once it passes it; the
    server goes on serving."""
    import http.client

    local = build_reward("jpeg_compressibility")
    with running(make_app(local, "jpeg_compressibility", max_body=4096)) as (url, _):
        status, answer = _post(url + "/score", b"x" * 5000)
        assert status == 413 and answer["error"] == "request body of 5000 bytes exceeds 4096"
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", "/score", body=iter([b"y" * 3000] * 4), encode_chunked=True)
        answer = conn.getresponse()
        assert answer.status == 413 and json.loads(answer.read())["error"] == "request body exceeds 4096 bytes"
        conn.close()
        body = wire.encode_request(_images(1, h=16, w=16), None)
        assert len(body) < 4096
        assert _post(url + "/score", body)[0] == 200


def test_a_killed_server_is_an_error_naming_the_url():
    local = build_reward("jpeg_compressibility")
    with running(make_app(local, "jpeg_compressibility")) as (url, _):
        remote = build_reward("remote:jpeg_compressibility", path=url, timeout=2, retries=2, backoff=0.01)
        assert remote(_images(2)).shape == (2,)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=f"reward server {url}/score unreachable or failing after 3 tries"):
        remote(_images(2))
    assert time.perf_counter() - start < 10  # bounded: timeouts and backoff, no endless retrying


def test_the_wrong_reward_or_no_url_is_a_config_error():
    local = build_reward("jpeg_compressibility")
    with running(make_app(local, "jpeg_compressibility")) as (url, _):
        with pytest.raises(ValueError, match="serves 'jpeg_compressibility', not 'pickscore'"):
            build_reward("remote:pickscore", path=url)
    with pytest.raises(ValueError, match="reward.paths must give its server's URL"):
        build_reward("remote:pickscore", path="/models/PickScore_v1")


def _fake_scores_app(body: str, status: int = 200):
    async def health(request):
        return JSONResponse({"reward": "fake", "needs_prompts": False})

    async def score(request):
        return Response(body, status_code=status, media_type="application/json")

    return Starlette(routes=[Route("/health", health), Route("/score", score, methods=["POST"])])


@pytest.mark.parametrize("body, message", [
    ('{"reward": "fake", "dtype": "float32", "scores": [0.5]}', "answered 1 scores for 2 images"),
    ('{"reward": "fake", "dtype": "float32", "scores": [0.5, NaN]}', "non-finite or non-numeric score: nan"),
    ('{"reward": "fake", "dtype": "float16", "scores": [0.5, 0.25]}', "scores of dtype 'float16'"),
    ('{"reward": "fake", "dtype": "float32"}', "without a 'scores' list"),
])
def test_a_wrong_answer_is_an_error_naming_the_url(body, message):
    with running(_fake_scores_app(body)) as (url, _):
        remote = build_reward("remote:fake", path=url, retries=0)
        with pytest.raises(RuntimeError, match=message) as err:
            remote(_images(2))
        assert url in str(err.value)


def test_a_failing_server_is_retried_then_an_error():
    with running(_fake_scores_app('{"error": "out of memory"}', status=500)) as (url, _):
        remote = build_reward("remote:fake", path=url, retries=1, backoff=0.01)
        with pytest.raises(RuntimeError, match="after 2 tries .*HTTP 500: out of memory"):
            remote(_images(2))


def _fake_openai(answer_for):
    seen = []

    async def chat(request):
        body = await request.json()
        content = body["messages"][0]["content"]
        text = next(c["text"] for c in content if c["type"] == "text")
        image = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
        assert image.startswith("data:image/png;base64,") and body["temperature"] == 0
        seen.append(text)
        return JSONResponse({"choices": [{"message": {"role": "assistant", "content": answer_for(text)}}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]), seen


def test_a_vlm_judge_through_an_openai_compatible_endpoint():
    prompts = ["a red cat", "a blue dog on a mat", "two birds"]
    app, seen = _fake_openai(lambda text: f"Score: {len(text) % 11}")
    with running(app) as (url, _):
        judge = build_reward("vlm_judge", path=url + "/v1", template="Rate '{prompt}' from 0 to 10.", concurrency=2)
        scores = judge(_images(3), prompts)
    expected = [len(f"Rate '{p}' from 0 to 10.") % 11 / 10 for p in prompts]
    assert scores.tolist() == pytest.approx(expected) and sorted(seen) == sorted(f"Rate '{p}' from 0 to 10."
                                                                                   for p in prompts)
    app, _ = _fake_openai(lambda text: "I cannot rate this image.")
    with running(app) as (url, _):
        judge = build_reward("vlm_judge", path=url + "/v1", retries=0)
        with pytest.raises(ValueError, match=f"{url}/v1/chat/completions for prompt 'a red cat' holds no score"):
            judge(_images(1), ["a red cat"])


def test_the_serve_reward_command_rejects_bad_input(capsys):
    with pytest.raises(SystemExit):
        cli(["serve-reward", "nope"])
    assert "unknown reward 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["serve-reward", "jpeg_compressibility", "--host", "0.0.0.0"])
    assert "needs --token" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["serve-reward", "jpeg_compressibility", "quality"])
    assert "not key=value" in capsys.readouterr().err


def test_auto_overlaps_served_rewards_only():
    assert resolve_schedule("auto", ["remote:pickscore"]) == "overlap"
    assert resolve_schedule("auto", ["pickscore", "vlm_judge"]) == "overlap"
    assert resolve_schedule("auto", ["pickscore"]) == "inline"
    assert resolve_schedule("batched", ["remote:pickscore"]) == "batched"


def test_a_run_scores_through_a_reward_server_while_it_rolls_out(tmp_path):
    from fastgrpo.models.tiny import save_tiny_pipeline
    from fastgrpo.train import Trainer, load_config

    save_tiny_pipeline("sd3", tmp_path / "sd3")
    (tmp_path / "prompts.txt").write_text("a red cat\na blue dog\na green square\n")
    local = build_reward("jpeg_compressibility")
    calls = []

    def counted(images, prompts=None):
        calls.append(images.shape[0])
        return local(images)

    counted.name, counted.needs_prompts = "jpeg_compressibility", False
    with running(make_app(counted, "jpeg_compressibility")) as (url, _):
        cfg = load_config(None, [
            "model.kind=sd3", f"model.path={tmp_path / 'sd3'}", "model.resolution=32", "model.dtype=fp32",
            "model.max_sequence_length=16", f"data.train_prompts={tmp_path / 'prompts.txt'}",
            "reward.names=remote:jpeg_compressibility", f"reward.paths=remote:jpeg_compressibility={url}",
            "sampling.steps=3", "window.size=1", "adagrpo.candidates=2", "adagrpo.keep=2", "group_size=3",
            f"out_dir={tmp_path / 'run'}"])
        trainer = Trainer(cfg)
        assert trainer.reward_schedule == "overlap"  # auto: a served reward overlaps the next rollout
        metrics = trainer.step()
    assert calls == [2, 3, 3]  # the two anchors, then each group while the next one rolled out
    assert math.isfinite(metrics["reward"]) and math.isfinite(metrics["loss"])


def test_the_batcher_holds_back_another_size_and_stops_when_told_mid_batch():
    from fastgrpo.rewards.serve import Batcher

    scorer = Gated()
    batcher = Batcher(scorer, max_batch=64)
    first = batcher.submit(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None)
    assert scorer.entered.wait(timeout=20)  # scoring the first request, held at the gate
    other = batcher.submit(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), None)  # another size: a batch of its own
    same = batcher.submit(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), None)
    batcher._queue.put(None)  # the stop sentinel, queued behind them (what close() sends)
    scorer.gate.set()
    assert first.result(timeout=20).shape == (2,) and other.result(timeout=20).shape == (1,)
    assert same.result(timeout=20).shape == (1,)
    batcher._thread.join(timeout=5)
    assert not batcher._thread.is_alive() and scorer.sizes == [2, 1, 1]

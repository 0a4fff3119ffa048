"""logging.backends: wandb in its offline mode (the scalars it recorded read back from its own run file and compared
with metrics.jsonl, the sample grids as images, the resolved config, the same run continued after resume),
TensorBoard's scalars and images read back with its event reader, and the config's errors."""
import json
import sys
from pathlib import Path

import pytest

from fastgrpo.train import Trainer, load_config

TINY = ("sampling.steps=3", "window.size=1", "adagrpo.candidates=2", "adagrpo.keep=1", "group_size=2",
        "eval_every=1", "eval_seeds=1")


def wandb_records(path: Path):
    """The protobuf records of a wandb run file: after a 7-byte header (":W&B", magic, version), LevelDB-log
    records — a 7-byte header (crc, little-endian length, type: 1 full, 2 first, 3 middle, 4 last) in 32 KiB
    blocks, a block's last < 7 bytes zero padding."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):
            pending = chunk
        elif kind in (3, 4):
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def history(path: Path) -> list[dict]:
    rows = []
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_wandb_offline_gets_the_scalars_images_and_config_and_resume_continues_the_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    common = TINY + (f"out_dir={tmp_path}", "logging.backends=[jsonl,tensorboard,wandb]",
                     "logging.wandb_mode=offline", "checkpoint_every=1")
    first = Trainer(load_config(None, common + ("iterations=1",)))
    first.run(progress=False)
    run_id = (tmp_path / "wandb_id").read_text().strip()
    assert first._tracking.wandb.id == run_id and first._tracking.wandb.config["group_size"] == 2
    Trainer(load_config(None, common + ("iterations=2",)), resume=str(tmp_path)).run(progress=False)
    runs = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 2  # the resumed session logged into the same run id
    files = {run.name: history(run / f"run-{run_id}.wandb") for run in runs}
    by_step = {}
    for row in (row for rows in files.values() for row in rows):
        by_step.setdefault(row["_step"], {}).update(row)
    for record in (json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()):
        scalars = {k: v for k, v in record.items() if k != "iteration" and isinstance(v, (int, float))}
        # seen once under xdist (KeyError on the resumed run's last step), not reproduced: say what each file held
        assert record["iteration"] in by_step, (record["iteration"], {
            name: sorted({row["_step"] for row in rows}) for name, rows in files.items()})
        got = by_step[record["iteration"]]
        assert {k: got[k] for k in scalars} == scalars, record["iteration"]
    media = [p.name for run in runs for p in (run / "files" / "media" / "images").glob("*.png")]
    assert {"samples_0", "samples_1", "samples_2", "before_after_2"} <= {name.rsplit("_", 1)[0] for name in media}


def test_tensorboard_gets_the_scalars_and_the_sample_grids(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(load_config(None, TINY + (f"out_dir={tmp_path}", "iterations=1"))).run(progress=False)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert [e.value for e in events.Scalars("reward")] == pytest.approx([record["reward"]])
    assert [e.step for e in events.Images("samples")] == [0, 1] and events.Images("before_after")


def test_logging_config_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="logging.backends must include jsonl"):
        load_config(None, ["logging.backends=[tensorboard]"])
    with pytest.raises(ValueError, match="logging.backends"):
        load_config(None, ["logging.backends=[jsonl,mlflow]"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    trainer = Trainer(load_config(None, TINY + (f"out_dir={tmp_path}", "iterations=1", "logging.backends=[jsonl,wandb]")))
    with pytest.raises(ImportError, match=r"logging.backends includes wandb, which is not installed"):
        trainer.run(progress=False)

"""Run outputs: bounded, labelled sample grids; reward curves whose axes follow the data; the JSONL log."""
import json

import pytest
import torch
from PIL import Image

from fastgrpo.train import report


def test_grid_of_sixteen_512px_samples_is_a_bounded_labelled_preview(tmp_path):
    images = torch.rand(16, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    prompts = [f"a photo of a very long and detailed prompt number {i} about a cat on a mat" for i in range(16)]
    report.save_grid(images, tmp_path / "grid.png", prompts=prompts)
    with Image.open(tmp_path / "grid.png") as grid:
        width, height = grid.size
        unlabelled = tmp_path / "plain.png"
        report.save_grid(images, unlabelled)
        with Image.open(unlabelled) as plain:
            assert plain.size[0] == width and plain.size[1] < height  # room for the labels
    assert width <= 8 * (report.TILE + 8) and height <= 2 * (report.TILE + 60)  # was 12k×6k at 3× full size
    assert (tmp_path / "grid.png").stat().st_size < 2_000_000


def test_small_samples_are_upscaled_sharp_and_labels_are_drawn(tmp_path):
    images = torch.zeros(2, 3, 32, 32)
    images[0, :, :16] = 1.0  # top half white
    report.save_grid(images, tmp_path / "a.png", prompts=["a red circle", "a blue square"])
    with Image.open(tmp_path / "a.png") as grid:
        rgb = grid.convert("RGB")
        x0 = y0 = 4  # the first tile's corner
        assert rgb.getpixel((x0 + 1, y0 + 63)) == (255, 255, 255)  # 32 → 128: row 15 of the source, still white
        assert rgb.getpixel((x0 + 1, y0 + 64)) == (0, 0, 0)  # nearest-neighbour: no blurred edge
        label = rgb.crop((x0, y0 + 128, x0 + 128, y0 + 140))
        assert min(label.convert("L").tobytes()) < 128  # dark text under the tile
    with pytest.raises(ValueError, match="prompts"):
        report.save_grid(images, tmp_path / "b.png", prompts=["only one"])


def test_curve_axes_follow_the_data_and_are_labelled(tmp_path):
    history = [{"iteration": i, "eval_train_reward": 20.0 + 0.1 * i, "eval_heldout_reward": 19.5 + 0.1 * i,
                "eval_train_correct": 0.3 + 0.01 * i} for i in range(0, 50, 10)]
    keys = ["eval_train_reward", "eval_heldout_reward", "eval_train_correct"]
    fig = report.save_curve(history, keys, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").is_file()
    reward_ax, correct_ax = fig.axes
    low, high = reward_ax.get_ylim()
    assert low <= 19.5 and high >= 20.4 and high - low < 5  # PickScore-sized values, not a fixed [0, 1]
    low, high = correct_ax.get_ylim()
    assert low <= 0.3 and high >= 0.34 and high < 1
    assert correct_ax.get_xlabel() == "iteration" and reward_ax.get_ylabel() == "reward"
    assert [t.get_text() for t in reward_ax.get_legend().get_texts()] == ["train_reward", "heldout_reward"]


def test_write_jsonl_replaces_the_log(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for i in range(3):
        report.append_jsonl(path, {"iteration": i})
    report.write_jsonl(path, [{"iteration": 0}, {"iteration": 1, "loss": 0.5}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"iteration": 0},
                                                                            {"iteration": 1, "loss": 0.5}]

"""Pictures: correctness marks on grid tiles, before/after pairs, curves with confidence bands and a wall-time axis."""
import pytest
import torch
from PIL import Image

from fastgrpo.train import report

PAD = 4  # report.render_grid's margin


def _badge(image, tile_x: int, tile_y: int, side: int = report.TILE):
    """The pixels of the badge at a tile's top-right corner."""
    x = tile_x + side - report.MARK - 1
    return [image.getpixel((x + i, tile_y + 1 + j)) for i in range(report.MARK) for j in range(report.MARK)]


def test_tiles_carry_a_coloured_tick_or_cross(tmp_path):
    images = torch.zeros(2, 3, 32, 32)
    report.save_grid(images, tmp_path / "g.png", prompts=["a red ring", "a blue bar"], correct=torch.tensor([1, 0]))
    with Image.open(tmp_path / "g.png") as grid:
        rgb = grid.convert("RGB")
        first, second = _badge(rgb, PAD, PAD), _badge(rgb, PAD + report.TILE + PAD, PAD)
    assert report.GOOD in first and report.BAD not in first
    assert report.BAD in second and report.GOOD not in second
    with pytest.raises(ValueError, match="correct"):
        report.save_grid(images, tmp_path / "bad.png", correct=[True])


def test_before_after_pairs_tiles_side_by_side(tmp_path):
    before, after = torch.zeros(3, 3, 32, 32), torch.ones(3, 3, 32, 32)
    prompts = ["one", "two", "three"]
    canvas = report.save_before_after(before, after, tmp_path / "ba.png", prompts, correct_before=[False] * 3,
                                      correct_after=[True] * 3, titles=("iteration 0", "iteration 40"))
    left = report.render_grid(before, prompts, [False] * 3, columns=4)
    assert canvas.width > 2 * left.width and canvas.height > left.height
    head = canvas.height - left.height
    # the first tile of each panel: black before, white after
    assert canvas.getpixel((PAD + 2, head + PAD + 40)) == (0, 0, 0)
    right_x = canvas.width - left.width
    assert canvas.getpixel((right_x + PAD + 2, head + PAD + 40)) == (255, 255, 255)
    assert min(canvas.crop((0, 0, canvas.width, head)).convert("L").tobytes()) < 128  # the titles
    with pytest.raises(ValueError, match="pair"):
        report.save_before_after(before, after[:2], tmp_path / "x.png", prompts)


def test_thumbnails_bound_the_stored_images():
    small = report.thumbnails(torch.rand(2, 3, 32, 32))
    big = report.thumbnails(torch.rand(2, 3, 512, 256))
    assert small.dtype == torch.uint8 and small.shape == (2, 3, 32, 32)
    assert big.shape == (2, 3, report.TILE, report.TILE // 2)


def test_curve_has_bands_components_and_a_wall_time_axis(tmp_path):
    history = []
    for i in range(0, 50, 10):
        row = {"iteration": i, "wall_s": 3.0 + 2.5 * i}
        for name, base in (("train", 0.7), ("heldout", 0.65)):
            for metric, value in (("reward", base), ("correct", base - 0.1), ("shape", base - 0.3),
                                  ("colour", base + 0.2)):
                key = f"eval_{name}_{metric}"
                row[key], row[key + "_lo"], row[key + "_hi"] = value + 0.001 * i, value - 0.05, value + 0.05
        history.append(row)
    keys = [k for k in history[0] if k.startswith("eval_")]
    fig = report.save_curve(history, keys, tmp_path / "curve.png")
    reward_ax, _, parts_ax = fig.axes
    assert [a.get_ylabel() for a in fig.axes] == ["reward", "exact correctness (fraction)", "reward component"]
    assert len(reward_ax.collections) == 2  # a shaded band each for train and held-out
    low, high = reward_ax.get_ylim()
    assert low <= 0.6 and high >= 0.75
    assert len(parts_ax.get_lines()) == 4  # shape and colour, train and held-out
    top = reward_ax.child_axes
    assert len(top) == 1 and top[0].get_xlabel() == "wall time since the run started (s)"
    assert parts_ax.get_xlabel() == "iteration"  # the bottom panel
    assert "95%" in fig.get_suptitle()

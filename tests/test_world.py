"""The embedded shapes world: classes distinct at the rendered size, a reward aligned with exact correctness that a
blob cannot hack, a held-out split, and shipped weights that start with headroom for RL."""
import itertools

import pytest
import torch

from fastgrpo.world import World, shapes


def _ground_truth(repeats: int = 4, seed: int = 0):
    combos = torch.tensor(shapes.COMBOS).repeat(repeats, 1)
    return shapes.render(combos, torch.Generator().manual_seed(seed)), combos


def _disk(combos, radius):
    centre = shapes._CENTRES[combos[:, 2]]
    rows = torch.arange(shapes.SIZE).float().view(1, -1, 1)
    cols = torch.arange(shapes.SIZE).float().view(1, 1, -1)
    mask = ((rows - centre[:, 0].view(-1, 1, 1)) ** 2 + (cols - centre[:, 1].view(-1, 1, 1)) ** 2) <= radius ** 2
    return mask.float()


def test_shape_classes_are_distinct_at_the_rendered_size():
    ious = shapes.pairwise_iou()
    assert set(ious) == set(itertools.combinations(shapes.SHAPES, 2))
    assert max(ious.values()) <= shapes.MAX_IOU
    # the same bound measured on renders without jitter (masks at a position, not the helper's centred grid)
    centre = torch.tensor([shapes.POSITIONS["center"]] * len(shapes.SHAPES))
    masks = shapes.shape_masks(torch.arange(len(shapes.SHAPES)), centre)
    for a, b in itertools.combinations(range(len(shapes.SHAPES)), 2):
        iou = (masks[a] * masks[b]).sum() / ((masks[a] + masks[b]) > 0).sum()
        assert iou <= shapes.MAX_IOU, (shapes.SHAPES[a], shapes.SHAPES[b], iou.item())


def test_a_world_with_overlapping_classes_is_rejected():
    def circle(dr, dc, k):
        return dr ** 2 + dc ** 2 <= (6.0 * k) ** 2

    def square(dr, dc, k):
        return (dr.abs() <= 5.5 * k) & (dc.abs() <= 5.5 * k)

    with pytest.raises(ValueError, match="'circle' and 'square' overlap with mask IoU 0.8"):
        shapes.check_shapes({"circle": circle, "square": square})
    shapes.check_shapes()  # the shipped classes pass


def test_ground_truth_renders_are_correct_and_score_about_one():
    images, combos = _ground_truth()
    assert shapes.correct(images, combos).float().mean() >= 0.99
    reward = shapes.reward(images, combos)
    assert reward.mean() >= 0.95 and reward.median() >= 0.98
    parts = shapes.components(images, combos)
    assert set(parts) == {"presence", "colour", "position", "shape"}
    assert torch.allclose(parts["presence"] * parts["colour"] * parts["position"] * parts["shape"], reward)
    assert all(((p >= 0) & (p <= 1)).all() for p in parts.values())
    for k, n in ((0, len(shapes.COLOURS)), (1, len(shapes.SHAPES)), (2, len(shapes.POSITIONS))):
        wrong = combos.clone()
        wrong[:, k] = (wrong[:, k] + 1) % n
        assert not shapes.correct(images, wrong).any()
        assert (shapes.reward(images, wrong) < 0.5 * reward).float().mean() > 0.95


def test_the_reward_prefers_the_right_shape_by_a_margin_not_colour_or_position():
    images, combos = _ground_truth(repeats=1)
    wrong = combos.clone()
    wrong[:, 1] = (wrong[:, 1] + 1) % len(shapes.SHAPES)
    parts = shapes.components(images, wrong)
    # colour and position stay saturated: only the shape term tells a right render from a wrong-shape one
    assert parts["colour"].mean() > 0.95 and parts["position"].mean() > 0.99
    assert parts["shape"].max() < 0.2


def test_a_blob_covering_every_shape_scores_low_on_shape_and_fails_correctness():
    combos = torch.tensor(shapes.COMBOS)
    radius = 11.0
    blob = _disk(combos, radius)
    covered = shapes.shape_masks(combos[:, 1], shapes._CENTRES[combos[:, 2]], 1.075)  # largest jittered size
    assert (covered <= blob).all()  # the disk does cover every shape
    images = blob.unsqueeze(1) * shapes._PALETTE[combos[:, 0]].view(-1, 3, 1, 1)
    parts = shapes.components(images, combos)
    assert parts["colour"].min() > 0.99 and parts["position"].min() > 0.99
    assert parts["shape"].max() < 0.2
    assert shapes.reward(images, combos).max() < 0.2
    assert not shapes.correct(images, combos).any()
    for r in (7.0, 8.0, 9.0):  # smaller blobs, down to the size of one shape, do not pass either
        small = _disk(combos, r).unsqueeze(1) * shapes._PALETTE[combos[:, 0]].view(-1, 3, 1, 1)
        assert shapes.reward(small, combos).mean() < 0.2 and not shapes.correct(small, combos).any()


def test_held_out_split():
    held, train = set(shapes.HELD_OUT), set(shapes.TRAIN)
    assert len(held) >= 20 and held.isdisjoint(train) and held | train == set(shapes.COMBOS)
    for k in range(3):  # every colour, shape and position is still trained on
        assert {c[k] for c in train} == {c[k] for c in shapes.COMBOS}


def test_random_reward_ignores_the_prompt_and_is_reproducible():
    images, combos = _ground_truth(repeats=1)
    r = shapes.random_reward(images, combos)
    assert torch.equal(r, shapes.random_reward(images.clone(), combos))
    assert torch.equal(r, shapes.random_reward(images, combos.flip(0)))
    assert 0.3 < r.mean() < 0.7 and r.std() > 0.2


def test_shipped_weights_start_with_headroom():
    from fastgrpo.train.rollout import sample
    from fastgrpo.train.schedule import sigmas

    world = World.load()
    n_params = sum(p.numel() for p in world.transformer.parameters())
    assert n_params < 5_000_000
    combos = torch.tensor(shapes.TRAIN + shapes.HELD_OUT)
    text = world.encode_prompts([shapes.prompt(tuple(c)) for c in combos.tolist()])
    denoise = lambda x, s, t: world.transformer(hidden_states=x, encoder_hidden_states=t.hidden,  # noqa: E731
                                               pooled_projections=t.pooled, timestep=s * 1000.0,
                                               return_dict=False)[0]
    ok, scores = [], []
    with torch.no_grad():
        for seed in range(3):
            noise = torch.randn((len(combos), *world.codec.latent_shape), generator=torch.Generator().manual_seed(seed))
            traj = sample(denoise, noise, sigmas(10, 3.0), text, None, guidance=1.0, eta=0.7, family="flow_sde")
            images = world.codec.decode(traj.latents)
            ok.append(shapes.correct(images, combos).float())
            scores.append(shapes.components(images, combos))
    correct = torch.stack(ok).mean().item()
    assert 0.25 <= correct <= 0.65, correct  # headroom, yet far above chance (0.25 · colour · position)
    # the images are coloured shapes: colour and position right almost always, shape is what is left to learn
    assert torch.cat([s["colour"] for s in scores]).mean() > 0.9
    assert torch.cat([s["position"] for s in scores]).mean() > 0.9


def test_world_save_round_trips_and_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    import os

    world = World.load()
    path = tmp_path / "w" / "world.safetensors"
    world.save(path, dtype=torch.float32)
    again = World.load(path)
    for a, b in zip(world.transformer.state_dict().values(), again.transformer.state_dict().values()):
        assert torch.equal(a.float(), b)
    before = path.read_bytes()
    with torch.no_grad():
        next(world.transformer.parameters()).add_(1.0)

    def fail(*args):
        raise OSError("disk gone at the rename")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        world.save(path, dtype=torch.float32)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["world.safetensors"]

"""Moving handwritten digits: deterministic, labelled, moving, held-out val digits; the step sampler."""

import numpy as np
import pytest
import torch

from orchestrator.data import DigitsClips, StepSampler, build_datasets
from orchestrator.data.digits_clips import _split_digits


def clips(**kw):
    args = {"num_clips": 16, "frames": 6, "size": 16, "channels": 4, "seed": 3}
    return DigitsClips(**{**args, **kw})


def test_clip_shape_range_and_label():
    clip, label = clips()[5]
    assert clip.shape == (4, 6, 16, 16) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    assert clip.max() > 0  # the digit is visible (background is -1)
    assert isinstance(label, int) and 0 <= label <= 9
    # every channel carries the same digit, at a lower intensity
    lit = clip > -1
    assert torch.equal(lit[0], lit[1]) and clip[1].max() < clip[0].max()


def test_deterministic_per_seed_and_index():
    a, b = clips(), clips()
    assert torch.equal(a[7][0], b[7][0]) and a[7][1] == b[7][1]
    assert not torch.equal(a[7][0], clips(seed=4)[7][0])
    assert not torch.equal(a[7][0], a[8][0])


def test_labels_cover_the_classes():
    labels = {clips(num_clips=200)[i][1] for i in range(200)}
    assert labels == set(range(10))


def test_digit_moves_and_stays_on_canvas():
    clip, _ = clips(frames=8, size=32)[2]
    frames = (clip[0] + 1) / 2  # (F, H, W) in [0, 1]
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    mass = frames.sum(dim=(1, 2))
    assert (mass > 0).all()  # the digit never leaves the canvas
    centres = torch.stack([(frames * ys).sum((1, 2)) / mass, (frames * xs).sum((1, 2)) / mass], 1)
    steps = (centres[1:] - centres[:-1]).norm(dim=1)
    assert (steps > 0.1).sum() >= 5  # it moves (a bounce may pause one frame)


def test_train_and_val_digit_images_are_disjoint():
    train, _ = _split_digits("train", 8)
    val, _ = _split_digits("val", 8)
    train_set = {t.tobytes() for t in train}
    assert len(train) + len(val) == 1797
    assert sum(v.tobytes() in train_set for v in val) <= 5  # the set has a few exact duplicates


def test_bad_arguments_are_named_at_once():
    with pytest.raises(ValueError) as err:
        DigitsClips(num_clips=0, frames=4, size=15, channels=4, split="test")
    message = str(err.value)
    assert (
        "num_clips (0)" in message
        and "size (15) must be even" in message
        and "split ('test')" in message
    )


def test_build_datasets_digits():
    train, val = build_datasets(
        "digits", channels=4, frames=4, size=16, num_train=10, num_val=3, seed=0
    )
    assert len(train) == 10 and len(val) == 3 and val.split == "val"


def test_step_sampler_shards_ranks_and_covers_epochs():
    sampler = StepSampler(12, batch_size=2, grad_accum=2, world_size=3, seed=1)
    seen = []
    for micro in range(2):
        per_rank = [sampler.indices(0, micro, rank) for rank in range(3)]
        seen += [i for idx in per_rank for i in idx]
    assert sorted(seen) == list(range(12))  # one step = one epoch here, nothing repeated
    assert sampler.indices(5, 1, 2) == StepSampler(
        12, batch_size=2, grad_accum=2, world_size=3, seed=1
    ).indices(5, 1, 2)
    assert np.unique([sampler.indices(1, 0, r) for r in range(3)]).size == 6


def test_digit_images_are_scikit_learns_bit_for_bit_without_importing_it():
    """The digits are read from scikit-learn's own file, as load_digits reads it, so a trial's
    worker skips importing scikit-learn (and scipy); the images and labels are the same bits."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from orchestrator.data.digits_clips import _digit_images

    _digit_images.cache_clear()
    images, labels = _digit_images()
    digits = load_digits()
    assert images.dtype == np.float32 and images.shape == (1797, 8, 8)
    assert np.array_equal(images, (digits.images / 16.0).astype(np.float32))
    assert np.array_equal(labels, digits.target.astype(np.int64))
    code = (
        "import sys; from orchestrator.data.digits_clips import _digit_images; "
        "_digit_images(); print('sklearn' in sys.modules, 'scipy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]

"""A folder of the user's clips: .pt tensors and PNG sequences load; a wrong folder fails clearly."""

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.data import FolderClips, FolderDataError
from orchestrator.recipe import DataConfig, TrainConfig


def write_pngs(folder, frames, size, value):
    folder.mkdir()
    for f in range(frames):
        Image.fromarray(np.full((size, size), value + f, dtype=np.uint8)).save(
            folder / f"{f:03d}.png"
        )


def test_pt_and_png_clips_load(tmp_path):
    torch.save(torch.randn(4, 3, 8, 8), tmp_path / "a.pt")  # (C, F, H, W)
    torch.save(torch.rand(3, 8, 8), tmp_path / "b.pt")  # (F, H, W): replicated to C
    write_pngs(tmp_path / "c", frames=3, size=8, value=100)
    train = FolderClips(tmp_path, channels=4, split="train", num_val=1)
    val = FolderClips(tmp_path, channels=4, split="val", num_val=1)
    assert train.names == ["a.pt", "b.pt"] and val.names == ["c"]
    clip, label = val[0]
    assert clip.shape == (4, 3, 8, 8) and label == 0
    assert torch.allclose(clip[:, 1], torch.full((4, 8, 8), 101 / 127.5 - 1))  # frame order kept
    assert torch.equal(train[1][0][0], train[1][0][3])


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(FolderDataError, match="does not exist"):
        FolderClips(tmp_path / "nope", channels=4)
    with pytest.raises(
        ValueError,
        match=r"data.source \('.*nope'\) must be 'digits', an existing folder of clips or an "
        r"existing prompt file",
    ):
        TrainConfig(data=DataConfig(source=str(tmp_path / "nope")))


def test_bad_clips_are_listed_together(tmp_path):
    torch.save(torch.randn(4, 3, 8, 8), tmp_path / "good.pt")
    torch.save({"not": "a tensor"}, tmp_path / "dict.pt")
    torch.save(torch.randn(4, 5, 8, 8), tmp_path / "longer.pt")
    torch.save(torch.randn(2, 3, 8, 8), tmp_path / "channels.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FolderDataError) as err:
        FolderClips(tmp_path, channels=4)
    message = str(err.value)
    for expected in (
        "dict.pt: holds a dict",
        "longer.pt: shape (F, H, W) = (5, 8, 8) differs",
        "channels.pt: 2 channels, the model takes 4",
        "empty/: a subfolder without PNG",
    ):
        assert expected in message


class Arbitrary:
    """Any pickled object that is not plain tensors/containers."""


def test_pickled_object_is_refused(tmp_path):
    torch.save(Arbitrary(), tmp_path / "evil.pt")  # only readable with weights_only=False
    torch.save(torch.randn(4, 3, 8, 8), tmp_path / "ok.pt")
    with pytest.raises(
        FolderDataError, match="evil.pt: not a tensor file readable with weights_only=True"
    ):
        FolderClips(tmp_path, channels=4)


def test_empty_folder_and_too_few_clips(tmp_path):
    with pytest.raises(FolderDataError, match="holds no clips"):
        FolderClips(tmp_path, channels=4)
    torch.save(torch.randn(4, 3, 8, 8), tmp_path / "only.pt")
    with pytest.raises(FolderDataError, match="at least 2 are needed"):
        FolderClips(tmp_path, channels=4)

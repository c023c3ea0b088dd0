"""Self-describing checkpoints: atomic writes, weights-only loading, clear errors."""
import pytest
import torch

import pixelwise
from pixelwise.io.checkpoint import make_checkpoint, read_checkpoint
from pixelwise.errors import CheckpointError
from pixelwise.io.files import atomic_torch_save, atomic_write


def small_model():
    torch.manual_seed(0)
    return pixelwise.build_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2)


def test_checkpoint_describes_itself(tmp_path):
    model = small_model()
    kwargs = dict(in_channels=1, num_classes=2, base_channels=4, depth=2)
    path = pixelwise.save_checkpoint(tmp_path / "a.pt", model, "unet", kwargs, ["bg", "cell"],
                                     mean=(0.4,), std=(0.2,), palette=[(0, 0, 0), (255, 0, 0)],
                                     config={"optim": {"lr": 0.1}})
    raw = torch.load(path, weights_only=True)  # plain tensors and builtins only
    assert raw["model"] == {"name": "unet", "kwargs": kwargs}
    ckpt = pixelwise.load_checkpoint(path)
    assert (ckpt.class_names, ckpt.mean, ckpt.std) == (["bg", "cell"], (0.4,), (0.2,))
    assert ckpt.palette == [(0, 0, 0), (255, 0, 0)] and ckpt.config == {"optim": {"lr": 0.1}}
    assert ckpt.num_classes == 2 and ckpt.in_channels == 1 and not ckpt.model.training


def test_pretrained_source_is_not_stored():
    ckpt = make_checkpoint(small_model(), "unet", dict(num_classes=2, pretrained="http://x/y.pth"),
                           ["a", "b"], (0.5,), (0.5,))
    assert "pretrained" not in ckpt["model"]["kwargs"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 1}, path)

    def broken(f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a save

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, broken)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_bad_checkpoints_are_named_in_the_error(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        read_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable checkpoint"):
        read_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a pixelwise checkpoint"):
        read_checkpoint(foreign)
    future = make_checkpoint(small_model(), "unet", dict(in_channels=1, num_classes=2,
                             base_channels=4, depth=2), ["a", "b"], (0.5,), (0.5,))
    future["version"] = 99
    torch.save(future, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="future.pt: checkpoint version 99"):
        read_checkpoint(tmp_path / "future.pt")
    future["version"] = 1
    future["model"]["kwargs"]["base_channels"] = 8  # weights no longer fit the architecture
    torch.save(future, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match=r"mismatch.pt: weights do not fit model 'unet': "
                                              r"\d+ key\(s\) with another shape"):
        pixelwise.load_checkpoint(tmp_path / "mismatch.pt")

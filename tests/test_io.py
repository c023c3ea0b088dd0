"""Atomic writes when the disk fills up, the temporaries a killed write leaves behind, and
the PNG encodings of masks and overlays."""
from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import pixelwise.io.files as pio
from pixelwise.errors import PixelwiseError


class FullDisk:
    """A file object whose writes fail as on a full disk, after ``room`` bytes."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_names_the_path_and_keeps_the_last_good_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    pio.atomic_torch_save({"epoch": 1}, path)
    real = os.fdopen
    monkeypatch.setattr(pio.os, "fdopen", lambda fd, mode: FullDisk(real(fd, mode), 4096))
    with pytest.raises(PixelwiseError, match=rf"{path}: cannot write \(No space left on "
                                             r"device\); the previous last.pt is kept"):
        pio.atomic_torch_save({"epoch": 2, "w": torch.zeros(10_000)}, path)
    with pytest.raises(PixelwiseError, match="new.json: cannot write .*nothing was written"):
        pio.atomic_write_json(tmp_path / "new.json", {"x": "y" * 10_000})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints", "last.pt"]


def test_file_size_limit_from_the_kernel(tmp_path):
    # A real failed write(2) (EFBIG under RLIMIT_FSIZE), in a child process.
    code = textwrap.dedent(f"""
        import resource, signal, torch
        from pixelwise.io.files import atomic_torch_save
        from pixelwise.errors import PixelwiseError
        path = {str(tmp_path / 'last.pt')!r}
        atomic_torch_save({{"epoch": 1}}, path)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        try:
            atomic_torch_save({{"w": torch.zeros(100_000)}}, path)
        except PixelwiseError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert f"{tmp_path / 'last.pt'}: cannot write (File too large); the previous last.pt is kept" \
        in out.stdout
    assert torch.load(tmp_path / "last.pt", weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_remove_stale_temporaries_only_touches_our_own(tmp_path):
    import tempfile

    stale = [tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=tmp_path)[1]
             for name in ("last.pt", "best.pt", "metrics.csv")]
    # atomic_path's, as the video writer leaves them: ".STEM.XXXXXXXX.tmp.SUFFIX"
    stale.append(tempfile.mkstemp(prefix=".clip.", suffix=".tmp.mp4", dir=tmp_path)[1])
    (tmp_path / stale[0]).write_bytes(b"\0" * 1000)
    keep = ["last.pt", ".last.pt.tmp", "notes.tmp", ".last.pt.abc.tmp", "x.last.pt.abcdefgh.tmp",
            ".clip.abcdefgh.tmp.mp4.bak", "clip.tmp.mp4"]
    for name in keep:
        (tmp_path / name).write_text("mine")
    (tmp_path / ".d.abcdefgh.tmp").mkdir()
    removed = pio.remove_stale_temporaries(tmp_path)
    assert sorted(map(str, removed)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + [".d.abcdefgh.tmp"])
    assert pio.remove_stale_temporaries(tmp_path / "missing") == []


# --- PNG encodings shared by `pixelwise predict` and the server -------------------------------

def _decode(data: bytes):
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_mask_png_is_a_palette_png_with_its_class_names():
    mask = np.array([[0, 1], [2, 2]], dtype=np.uint8)
    img = _decode(pio.encode_mask_png(mask, [(1, 2, 3), (4, 5, 6), (7, 8, 9)], ["a", "b", "c"]))
    assert img.mode == "P"
    assert np.asarray(img).tolist() == [[0, 1], [2, 2]]  # pixel values are the classes
    assert img.getpalette()[:9] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert json.loads(img.text["pixelwise:class_names"]) == ["a", "b", "c"]


def test_mask_png_of_more_than_256_classes_is_16_bit():
    names = [f"c{i}" for i in range(300)]
    # Every mask of a 300-class model is 16-bit, even one whose values would fit a palette.
    for values in ([[0, 299]], [[0, 3]]):
        img = _decode(pio.encode_mask_png(np.array(values, dtype=np.int64), [], names))
        assert img.mode == "I;16" and np.asarray(img).tolist() == values
    # A value past 255 does not fit a palette either, whatever the names.
    img = _decode(pio.encode_mask_png(np.array([[256]]), [(0, 0, 0)], ["a"]))
    assert img.mode == "I;16" and np.asarray(img).tolist() == [[256]]


def test_mask_png_refuses_what_a_png_cannot_hold():
    with pytest.raises(ValueError, match=r"must be \(H, W\)"):
        pio.encode_mask_png(np.zeros((2, 2, 3), np.uint8), [], ["a"])
    with pytest.raises(ValueError, match="-1..0 do not fit a PNG"):
        pio.encode_mask_png(np.array([[-1, 0]]), [], ["a"])
    with pytest.raises(ValueError, match="0..65536 do not fit a PNG"):
        pio.encode_mask_png(np.array([[0, 65536]]), [], ["a"])


def test_rgb_png_round_trip():
    rgb = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(np.asarray(_decode(pio.encode_rgb_png(rgb))), rgb)

"""Atomic writes when the disk fills up, and the temporaries a killed write leaves behind."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import pixelwise.io as pio
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
        from pixelwise.io import atomic_torch_save
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
    (tmp_path / stale[0]).write_bytes(b"\0" * 1000)
    keep = ["last.pt", ".last.pt.tmp", "notes.tmp", ".last.pt.abc.tmp", "x.last.pt.abcdefgh.tmp"]
    for name in keep:
        (tmp_path / name).write_text("mine")
    (tmp_path / ".d.abcdefgh.tmp").mkdir()
    removed = pio.remove_stale_temporaries(tmp_path)
    assert sorted(map(str, removed)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + [".d.abcdefgh.tmp"])
    assert pio.remove_stale_temporaries(tmp_path / "missing") == []

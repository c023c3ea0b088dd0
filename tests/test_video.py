"""Video prediction: overlay with the input's frames and rate, lossless mask video, per-frame
class areas, the same forward path as images (tiles, TTA), frames/s, and unreadable videos."""
import csv
import json
import sys
from fractions import Fraction

import numpy as np
import pytest

from pixelwise.cli import main
from pixelwise.inference.predict import Predictor
from pixelwise.errors import PixelwiseError
from test_predict import UNET3, _save

from common import listed

av = pytest.importorskip("av", reason="video tests need PyAV: pip install 'pixelwise[video]'")
pytestmark = pytest.mark.usefixtures("one_thread")

RATE = Fraction(25, 2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("c") / "unet3.pt", "unet", UNET3, ["sky", "road", "car"],
                 palette=[(10, 20, 30), (200, 0, 0), (0, 0, 250)])


def make_clip(path, frames=9, size=(30, 41)):
    """A short H.264 clip (odd width: 4:4:4) with moving bands."""
    h, w = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv444p"
        for i in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            img[:, : 4 * i + 3] = (220, 180, 40)
            img[h // 2:, :, 2] = 160
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, Fraction(stream.average_rate)


def _run(*args):
    with pytest.raises(SystemExit) as e:
        main(["predict", *map(str, args), "--no-progress", "--device", "cpu"])
    return e.value.code


def test_video_outputs_match_frame_by_frame_prediction(ckpt, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    assert _run(clip, "-c", ckpt, "-o", out, "--mask-video", "--tile-size", "16", "--tta",
                "--frames-per-batch", "4") == 0
    frames, rate = decode(clip)
    overlay, overlay_rate = decode(out / "clip_overlay.mp4")
    assert len(overlay) == len(frames) == 9 and overlay_rate == rate == RATE
    assert overlay[0].shape == (30, 41, 3)
    # the same forward path as images: tiles and TTA included
    pred = Predictor(ckpt, tile_size=16, tta=True, fast=True)
    want = [pred.predict(f).mask for f in frames]
    masks, mask_rate = decode(out / "clip_mask.mkv")
    assert mask_rate == RATE and len(masks) == 9
    palette = np.array(pred.palette, np.uint8)
    for got, mask in zip(masks, want):
        assert np.array_equal(got, palette[mask])  # lossless: colours map back to classes
    with open(out / "clip_areas.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["frame", "time_s", "sky", "road", "car"] and len(rows) == 10
    assert rows[3][:2] == ["2", "0.160000"]
    for row, mask in zip(rows[1:], want):
        assert [int(v) for v in row[2:]] == np.bincount(mask.ravel(), minlength=3).tolist()
    (entry,) = json.loads((out / "summary.json").read_text())["videos"]
    assert entry["frames"] == 9 and entry["frame_rate"] == 12.5 and entry["frames_per_s"] > 0
    assert entry["classes"]["sky"]["pixels"] == sum(int((m == 0).sum()) for m in want)


def test_skip_existing_video_keeps_its_summary(ckpt, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=3)
    out = tmp_path / "out"
    assert _run(clip, "-c", ckpt, "-o", out) == 0
    first = json.loads((out / "summary.json").read_text())["videos"][0]
    stamp = (out / "clip_overlay.mp4").stat().st_mtime_ns
    assert _run(clip, "-c", ckpt, "-o", out, "--skip-existing") == 0
    again = json.loads((out / "summary.json").read_text())["videos"][0]
    assert (out / "clip_overlay.mp4").stat().st_mtime_ns == stamp
    first.pop("frames_per_s")
    assert again == first


def test_unreadable_video_is_listed(ckpt, tmp_path, capsys):
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00 not a video")
    out = tmp_path / "out"
    assert _run(tmp_path / "broken.mp4", "-c", ckpt, "-o", out) == 1
    (failed,) = json.loads((out / "summary.json").read_text())["failed"]
    assert failed["error"].startswith(f"{tmp_path / 'broken.mp4'}: not a readable video")
    assert "Traceback" not in capsys.readouterr().err
    assert listed(out) == ["summary.json"]  # no torn outputs


def test_bench_fps_reports_frames_per_second(ckpt, tmp_path, capsys):
    clip = make_clip(tmp_path / "clip.mp4", frames=5)
    with pytest.raises(SystemExit) as e:
        main(["bench", "--fps", str(clip), "-c", str(ckpt), "--device", "cpu"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "5 frames of 41x30" in out and "frames/s predicting" in out


def test_missing_pyav_gives_a_clear_message(monkeypatch):
    from pixelwise.inference import video

    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(PixelwiseError, match=r"pip install 'pixelwise\[video\]'"):
        video._av()

"""Prediction over many files: past unreadable inputs, resumable, and sharded over torchrun
processes (2 gloo processes on CPU give the outputs of one)."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.inference.batch import output_stem, plan_jobs, shard
from test_predict import UNET3, _save, image

from common import listed

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("c") / "unet3.pt", "unet", UNET3, ["sky", "road", "car"])


def _predict(*args):
    with pytest.raises(SystemExit) as e:
        main(["predict", *map(str, args), "--no-progress", "--device", "cpu"])
    return e.value.code


def _good(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        Image.fromarray(image(20 + k, 24, seed=k)).save(folder / name)


def _bad_folder(tmp_path):
    src = tmp_path / "in"
    _good(src, "a.png", "b.png", "f.png")
    (src / "c.png").write_text("a text file, not an image")
    Image.fromarray(image(40, 40, seed=9)).save(src / "d.png")
    data = (src / "d.png").read_bytes()
    (src / "d.png").write_bytes(data[: len(data) // 2])                   # truncated
    (src / "e.png").write_bytes(b"")                                      # 0 bytes
    return src


def test_unreadable_inputs_are_listed_and_the_rest_predicted(ckpt, tmp_path, capsys):
    src, out = _bad_folder(tmp_path), tmp_path / "out"
    assert _predict(src, "-c", ckpt, "-o", out) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [e["mask"] for e in summary["images"]] == ["a_mask.png", "b_mask.png", "f_mask.png"]
    failed = {os.path.basename(f["input"]): f["error"] for f in summary["failed"]}
    assert sorted(failed) == ["c.png", "d.png", "e.png"]
    assert all(msg.startswith(str(src / name)) for name, msg in failed.items())
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for name, msg in failed.items():
        assert f"error: {msg}" in err
    assert err.strip().splitlines()[-1] == (
        f"error: 3 input(s) could not be predicted (listed in {out / 'summary.json'} "
        "under 'failed')")


def test_fail_fast_stops_at_the_first_unreadable_input(ckpt, tmp_path, capsys):
    src, out = _bad_folder(tmp_path), tmp_path / "out"
    assert _predict(src, "-c", ckpt, "-o", out, "--fail-fast") == 1
    assert listed(out) == ["a_mask.png", "a_overlay.png",
                                                     "b_mask.png", "b_overlay.png"]
    assert f"{src / 'c.png'}" in capsys.readouterr().err


def test_skip_existing_predicts_only_the_missing_files(ckpt, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _good(src, "a.png", "b.png", "c.png")
    assert _predict(src, "-c", ckpt, "-o", out, "--probs") == 0
    first = json.loads((out / "summary.json").read_text())
    stamps = {n: (out / n).stat().st_mtime_ns for n in listed(out)}
    (out / "b_overlay.png").unlink()  # as if killed while writing b
    (out / "summary.json").unlink()
    assert _predict(src, "-c", ckpt, "-o", out, "--probs", "--skip-existing") == 0
    assert json.loads((out / "summary.json").read_text()) == first
    again = {n: (out / n).stat().st_mtime_ns for n in listed(out)}
    redone = {n for n in stamps if n != "summary.json" and again[n] != stamps[n]}
    assert redone == {"b_mask.png", "b_overlay.png", "b_probs.npy"}


def test_shards_cover_every_input_once_with_names_fixed_before_sharding(tmp_path):
    paths = [tmp_path / "x" / "a.png", tmp_path / "b.png", tmp_path / "y" / "a.png",
             tmp_path / "c.png", tmp_path / "z" / "a.png"]
    jobs = plan_jobs(paths)
    a = [output_stem(paths[i]) for i in (0, 2, 4)]
    assert len(set(a)) == 3 and all(s.startswith("a_") and len(s) == 10 for s in a)
    assert [j.stem for j in jobs] == [a[0], "b", a[1], "c", a[2]]
    # the same input keeps its name in any order (not "a_2" for the second one seen)
    assert [j.stem for j in plan_jobs(paths[::-1])] == [a[2], "c", a[1], "b", a[0]]
    parts = [shard(jobs, r, 2) for r in range(2)]
    assert sorted(j.index for p in parts for j in p) == list(range(5))
    assert [j.stem for j in parts[1]] == ["b", "c"]


def test_two_gloo_processes_predict_like_one(ckpt, tmp_path):
    src = tmp_path / "in"
    _good(src, *[f"{i}.png" for i in range(5)])
    (src / "bad.png").write_bytes(b"")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = ["-m", "pixelwise.cli", "predict", str(src), "-c", str(ckpt), "--no-progress",
           "--device", "cpu"]
    one = subprocess.run([sys.executable, *cmd, "-o", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert one.returncode == 1, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", *cmd, "-o", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=180)
    assert two.returncode != 0 and two.stderr.count("bad.png: ") >= 1, two.stderr[-3000:]
    one_files = listed(tmp_path / "one")
    assert one_files == listed(tmp_path / "two")
    assert len(one_files) == 2 * 5 + 1
    for name in one_files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert [os.path.basename(e["input"]) for e in summary["images"]] == [f"{i}.png"
                                                                         for i in range(5)]
    assert [os.path.basename(f["input"]) for f in summary["failed"]] == ["bad.png"]


def test_scheduler_array_tasks_split_a_file_list(ckpt, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _good(src, "a.png", "b.png", "c.png")
    (tmp_path / "files.txt").write_text("".join(f"{src / n}\n" for n in ("a.png", "b.png",
                                                                          "c.png")))
    for task in range(2):
        assert _predict("--files-from", tmp_path / "files.txt", "--shard", f"{task}/2",
                        "-c", ckpt, "-o", out) == 0
    parts = [json.loads((out / f"summary-{t}-of-2.json").read_text()) for t in range(2)]
    assert [[e["mask"] for e in p["images"]] for p in parts] == [["a_mask.png", "c_mask.png"],
                                                                 ["b_mask.png"]]
    # one pass over the whole list with --skip-existing merges them without predicting again
    assert _predict("--files-from", tmp_path / "files.txt", "-c", ckpt, "-o", out,
                    "--skip-existing") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [e["mask"] for e in summary["images"]] == ["a_mask.png", "b_mask.png", "c_mask.png"]
    assert _predict("--shard", "2/2", src, "-c", ckpt, "-o", out) == 2

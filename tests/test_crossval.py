"""K-fold training (--folds / --fold): the folds, crossval.json, resume, bad options; and the
post-processing a single run chooses on val."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from pixelwise.data import load_spec
from pixelwise.data.spec import fold_parts
from pixelwise.errors import ConfigError
from pixelwise.inference.postprocess import check_postprocessing
from pixelwise.io.checkpoint import read_checkpoint
from pixelwise.io.config import config_to_dict, load_config
from pixelwise.training import crossval as X
from pixelwise.training.postchoice import choose_on_split
from pixelwise.training.train import train


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    from pixelwise.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("shapes"), n_train=6, n_val=2,
                                   size=32, seed=1)


def config(spec: Path, out: Path, epochs: int = 1, name: str = "cv"):
    return load_config(raw={
        "model": {"name": "unet", "kwargs": {"base_channels": 4, "depth": 2}},
        "data": {"spec": str(spec), "batch_size": 2, "workers": 0},
        "optim": {"lr": 0.05, "warmup_steps": 0},
        "train": {"epochs": epochs, "seed": 3, "progress": False, "tensorboard": False,
                  "device": "cpu", "fast": False},
        "output": {"dir": str(out), "name": name},
    })


# --- the folds ------------------------------------------------------------------------------

def test_fold_parts_are_disjoint_cover_and_are_seeded():
    parts = fold_parts(23, 5, seed=0)
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(23)) and len(flat) == 23  # cover, no index twice
    assert sorted(len(p) for p in parts) == [4, 4, 5, 5, 5]
    assert fold_parts(23, 5, seed=0) == parts                   # stable
    assert fold_parts(23, 5, seed=1) != parts                   # the seed matters


def test_spec_folds_split_train_into_train_and_fold_val(spec_path):
    base = yaml.safe_load(spec_path.read_text())
    base["root"] = str(spec_path.parent)
    train_images = [s.image for s in load_spec(base).resolve("train")]
    held = []
    for i in range(3):
        spec = load_spec({**base, "folds": {"from": "train", "k": 3, "index": i, "seed": 7}})
        rest, fold = spec.resolve("train"), spec.resolve("fold_val")
        assert {s.image for s in rest}.isdisjoint(s.image for s in fold)
        assert sorted(s.image for s in rest + fold) == train_images
        assert "fold_val" in spec.split_names and len(fold) == 2
        held += [s.image for s in fold]
    assert sorted(held) == train_images  # every image held out exactly once
    with pytest.raises(ConfigError, match="folds.index 3 is outside 0..2"):
        load_spec({**base, "folds": {"k": 3, "index": 3}})
    with pytest.raises(ConfigError, match="holdout and folds both split 'train'"):
        load_spec({**base, "holdout": {"fraction": 0.5, "to": "held"},
                   "folds": {"k": 2, "index": 0, "to": "other"}})


def test_a_holdout_is_folded_back_in_and_the_budget_is_per_fold(spec_path, tmp_path):
    base = yaml.safe_load(spec_path.read_text())
    base.update(root=str(spec_path.parent), holdout={"from": "train", "to": "held",
                                                      "fraction": 0.5})
    cfg = config(spec_path, tmp_path).model_copy(deep=True)
    cfg.data.spec, cfg.data.val_split, cfg.train.max_minutes = base, "held", 1.5
    folding = X.plan_folds(cfg, 3)
    assert (folding.split, folding.num_images) == ("train", 6)  # all 6, not the 3 left
    assert folding.spec_ref["holdout"] is None
    text = folding.describe()
    assert "3 folds of split 'train' (6 images" in text and "'held' is folded back in" in text
    assert "time budget: 1.5 min per fold (3 folds: about 4.5 min of training in all)" in text
    spec = load_spec(X.fold_config(folding, 0).data.spec)
    assert len(spec.resolve("train")) == 4 and len(spec.resolve("fold_val")) == 2


# --- runs -----------------------------------------------------------------------------------

def test_three_fold_run_writes_crossval_json(spec_path, tmp_path):
    folding = X.plan_folds(config(spec_path, tmp_path), 3)
    assert "split 'val' is not used" in folding.note
    result = X.train_folds(folding)
    run = tmp_path / "cv"
    assert json.loads((run / "crossval.json").read_text()) == result
    assert result["members"] == [f"fold{i}/checkpoints/best.pt" for i in range(3)]
    assert (result["split"], result["folds"], result["seed"], result["num_images"]) == (
        "train", 3, 3, 6)
    held = [name for e in result["per_fold"] for name in e["images"]]
    assert sorted(held) == [f"train/images/{i:04d}.png" for i in range(6)]
    for i, entry in enumerate(result["per_fold"]):
        assert entry["num_images"] == 2
        # out-of-fold predictions are labelled as validation labelled them: the fold's
        # logged score of its best epoch (one epoch here)
        with open(run / f"fold{i}" / "metrics.csv") as fh:
            logged = float(list(csv.DictReader(fh))[-1]["mean_iou"])
        assert entry["mean_iou"] == pytest.approx(logged, abs=1e-6)
        # the folds' best.pt carry no choice of their own
        assert read_checkpoint(run / result["members"][i]).get("postprocess") is None
    pooled = result["pooled"]
    assert sum(map(sum, pooled["confusion_matrix"])) == 6 * 32 * 32  # every OOF pixel once
    check_postprocessing(result["postprocess"], 4)
    assert set(result["postprocess"]["report"]) == {"1", "2", "3"}


def test_killed_fold_run_resumes(spec_path, tmp_path):
    folding = X.plan_folds(config(spec_path, tmp_path, epochs=2), 2)
    assert X.train_folds(X.plan_folds(folding.cfg, 2, only=0)) is None  # fold 1 missing
    fold0 = (tmp_path / "cv" / "fold0" / "checkpoints" / "last.pt").read_bytes()
    # fold 1 "killed" after its first epoch: last.pt at epoch 1, no fold.json
    half = X.fold_config(folding, 1).model_copy(deep=True)
    half.train.epochs = 1
    train(half, choose_postprocess=False)
    assert not X.fold_finished(folding, 1)
    result = X.train_folds(folding, resume=True)
    assert (tmp_path / "cv" / "fold0" / "checkpoints" / "last.pt").read_bytes() == fold0
    last1 = read_checkpoint(tmp_path / "cv" / "fold1" / "checkpoints" / "last.pt")
    assert last1["training"]["progress"]["epoch"] == 2  # continued, not restarted
    assert result is not None and len(result["per_fold"]) == 2
    with pytest.raises(ConfigError, match="holds 2 folds of 'train'.*not 3"):
        X.plan_folds(folding.cfg, 3)


@pytest.mark.parametrize("args, message", [
    (["--folds", "1"], "--folds 1: cross-validation needs at least 2 folds"),
    (["--folds", "3", "--fold", "3"], r"--fold 3: outside 0..2 \(--folds 3\)"),
    (["--fold", "0"], "--fold 0: give the number of folds too"),
    (["--folds", "7"], "--folds 7: split 'train' of 'synthetic-shapes' has 6 images; at most 6"),
])
def test_bad_fold_options_are_one_line_errors(spec_path, tmp_path, capsys, args, message):
    from pixelwise.cli import main

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config(spec_path, tmp_path))))
    with pytest.raises(SystemExit) as e:
        main(["train", str(path), "-q", *args])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1
    assert err.startswith("error: ") and re.search(message, err)
    assert not (tmp_path / "cv").exists()  # refused before anything was written


def test_single_run_stores_the_choice_made_on_val(spec_path, tmp_path):
    run = train(config(spec_path, tmp_path, name="one"))
    spec = read_checkpoint(run / "checkpoints" / "best.pt")["postprocess"]
    check_postprocessing(spec, 4)
    assert set(spec["report"]) == {"1", "2", "3"}
    assert spec["report"]["1"]["name"] == "disc"
    # it is what choose_on_split computes from best.pt on val
    again = choose_on_split(run / "checkpoints" / "best.pt", config(spec_path, tmp_path), "cpu")
    assert again == spec

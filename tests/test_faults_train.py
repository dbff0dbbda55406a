"""Fault suite of the training stage and the recipe runner (issue 7): a `train` killed anywhere resumes to the
weights and metrics of an uninterrupted seeded run; checkpoints are read with weights_only (a malicious pickle
never runs); recipes with unknown keys, wrong types or paths of their own are refused naming the key.

fault                                          outcome                                                data lost
SIGKILL mid-epoch                              --resume restarts that epoch from last.pt              that epoch's
SIGKILL while last.pt is being written         the previous last.pt is intact, --resume from it; the  compute only
                                               half-written temporary is removed by the next run
Ctrl-C (SIGINT) mid-epoch                      exit 1 naming last.pt and --resume
  ... then --resume to the end                 model.pt and metrics equal to an uninterrupted run     none
malicious pickle as last.pt / --init-from /    refused (CheckpointError naming the file), its code    none
  evaluate checkpoint                          never runs, even with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD
truncated / empty checkpoint                   refused naming the file                                none
recipe: unknown key / wrong type / reserved    `run` exits 1 naming the key before writing anything   none
  path key / model name with '..'
existing OUT/cache not made by `run`           refused, folder named, --force to replace              none
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

import faultkit as fk

SIZES = ("--body-size", "64x32", "--part-size", "16x32")
EPOCHS = 3
TRAIN_FLAGS = ("--epochs", str(EPOCHS), "--batch-size", "4", "--workers", "0", "--seed", "11", "--device", "cpu",
               "--lr", "0.02", "--no-tensorboard", "--no-progress", *SIZES)
TIMING = ("time_s", "images_per_s")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A real crop cache of 12 training images (2 identities) at small input sizes."""
    from posecrop.crop_stage import CropConfig, run_crop

    tmp = tmp_path_factory.mktemp("train-cache")
    root = fk.synth_market(tmp / "data")
    out = tmp / "cache"
    run_crop(CropConfig(root=root, out=out, workers=0, limit=12, body_size=(64, 32), part_size=(16, 32),
                        progress=False))
    assert len(fk.part_ids(out)) == 12
    return out


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _epoch_of(path: Path) -> int:
    """The epoch stored in a checkpoint (memory-mapped: the tensors are not read)."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])


def _train(cache: Path, out: Path, *extra: str, event: tuple[str, int] | None = None) -> subprocess.Popen:
    """`train` in its own session; with `event` = (name, n) it stops itself at the n-th event (fk.popen_paused)."""
    if event is not None:
        return fk.popen_paused("train", "--cache", cache, "--out", out, *TRAIN_FLAGS, *extra, event=event[0],
                               n=event[1], new_session=True)
    return fk.popen("train", "--cache", cache, "--out", out, *TRAIN_FLAGS, *extra, new_session=True)


@pytest.fixture(scope="module")
def interrupted(cache, tmp_path_factory) -> dict:
    """One training run interrupted three times (seeded moments) and resumed after each; plus the same run
    uninterrupted, in this process."""
    from reidkit.typedconfig import from_mapping
    from reidtrain.config import TrainConfig
    from reidtrain.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures come before the autouse one: the reference run below needs it
    tmp = tmp_path_factory.mktemp("train-faults")
    run = tmp / "killed"
    ckpt = run / "checkpoints" / "last.pt"
    left: set[str] = set()  # temporaries of earlier kills (until the next run removes them)
    temporaries = lambda: [t for t in (run / "checkpoints").glob(".last.pt.*.tmp") if t.name not in left]  # noqa
    events: dict = {}

    def mid_epoch() -> bool:
        """In an epoch after a finished one: last.pt was saved after the last metrics line was written (in
        that order at the end of every epoch) and no checkpoint is being written."""
        metrics = run / "metrics.jsonl"
        return (not temporaries() and ckpt.exists() and metrics.exists()
                and ckpt.stat().st_mtime_ns >= metrics.stat().st_mtime_ns and len(_metrics(run)) < EPOCHS)

    # The runs stop themselves at named events (reidkit.pause), so every kill lands where it is meant to on any CPU.
    from reidtrain.data import load_split
    steps = len(load_split(cache, "train", {"body": "whole"})) // 4      # batch 4, the last partial batch dropped

    # 1. SIGKILL in the middle of an epoch: after the first step of epoch 2 (epoch 1's checkpoint is complete)
    p = _train(cache, run, event=("train-step", steps + 1))
    assert mid_epoch(), "not stopped in the middle of epoch 2"
    events["kill_mid_epoch_after"] = _epoch_of(ckpt)
    fk.kill(p)

    # 2. SIGKILL while last.pt is being written (its temporary is complete, not yet renamed)
    p = _train(cache, run, "--resume", event=("checkpoint-temp", 1))
    assert temporaries(), "no checkpoint temporary at the pause point"
    events["kill_in_save_after"] = _epoch_of(ckpt)  # the previous checkpoint is complete and loads
    events["temporaries_at_kill"] = [t.name for t in temporaries()]
    fk.kill(p)
    left.update(events["temporaries_at_kill"])

    # 3. Ctrl-C in the middle of an epoch: in the second epoch of the resumed run, after its first checkpoint
    p = _train(cache, run, "--resume", event=("train-step", steps + 2))
    assert mid_epoch(), "not stopped in the middle of an epoch"
    events["ctrl_c_after"] = _epoch_of(ckpt)
    fk.resume(p)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    events["ctrl_c"] = (p.returncode, " ".join(err.split()))

    # 4. resume to the end
    p = _train(cache, run, "--resume")
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    events["final_stderr"] = err

    cfg = from_mapping(TrainConfig, {"cache": str(cache), "out": str(tmp / "straight"), "epochs": EPOCHS,
                                     "batch_size": 4, "workers": 0, "seed": 11, "device": "cpu", "lr": 0.02,
                                     "tensorboard": False, "body_size": [64, 32], "part_size": [16, 32]})
    try:
        train(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return {"run": run, "straight": tmp / "straight", **events}


def test_killed_and_resumed_training_equals_the_uninterrupted_run(interrupted):
    from reidtrain.checkpoint import load_checkpoint

    run, straight = interrupted["run"], interrupted["straight"]
    assert interrupted["kill_mid_epoch_after"] >= 1 and interrupted["kill_in_save_after"] >= 1
    assert interrupted["temporaries_at_kill"]
    code, msg = interrupted["ctrl_c"]
    assert code == 1 and "interrupted" in msg and "last.pt" in msg and "--resume" in msg, msg
    assert "resuming" in interrupted["final_stderr"]

    a, b = load_checkpoint(straight / "model.pt"), load_checkpoint(run / "model.pt")
    assert a["epoch"] == b["epoch"] == EPOCHS
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not differ, f"{len(differ)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"
    assert _metrics(run) == _metrics(straight)  # loss, accuracy, lr of every epoch (timings aside)
    assert [r["epoch"] for r in _metrics(run)] == list(range(1, EPOCHS + 1))


def test_a_resumed_run_leaves_no_half_written_checkpoint(interrupted):
    """The temporary of the checkpoint write killed half-way (as large as a checkpoint) is gone after --resume."""
    assert interrupted["temporaries_at_kill"]
    assert not list(interrupted["run"].rglob("*.tmp"))


# ------------------------------------------------------------------------------------------------ checkpoints


class _Evil:
    """Unpickling this calls open(marker, 'w'): what a malicious checkpoint would do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    """A torch checkpoint (our format's keys) whose pickle creates `marker` when loaded without weights_only."""
    torch.save({"format": "reidtrain-checkpoint-v1", "epoch": 1, "model": {}, "meta": _Evil(marker)}, path)
    assert path.is_file() and not marker.exists()
    return path


def test_a_malicious_checkpoint_is_refused_and_never_runs(cache, tmp_path, monkeypatch):
    from reidtrain.checkpoint import CheckpointError, init_from_checkpoint, load_checkpoint
    from reidtrain.evaluate import load_trained
    from reidtrain.model import build_model

    marker = tmp_path / "owned"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    # the environment variable that turns torch.load's default to weights_only=False must not matter
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    for load in (lambda: load_checkpoint(evil), lambda: load_trained(evil),
                 lambda: init_from_checkpoint(build_model("baseline", 2, (64, 32), (16, 32)), evil)):
        with pytest.raises(CheckpointError, match=f"{evil}.*not a loadable checkpoint"):
            load()
        assert not marker.exists()

    # the command: a resumed run whose last.pt was replaced
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    os.link(evil, run / "checkpoints" / "last.pt")
    env = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    resumed = fk.cli("train", "--cache", cache, "--out", run, *TRAIN_FLAGS, "--resume", env=env, timeout=300)
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr[-2000:]
    assert "last.pt: not a loadable checkpoint" in " ".join(resumed.stderr.split())
    assert "Traceback" not in resumed.stderr and not marker.exists()
    assert not (run / "model.pt").exists()


def test_a_truncated_checkpoint_is_refused_naming_the_file(interrupted, tmp_path):
    from reidtrain.checkpoint import CheckpointError, load_checkpoint
    from reidtrain.evaluate import load_trained

    data = (interrupted["run"] / "model.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    for load in (load_checkpoint, load_trained):
        with pytest.raises(CheckpointError, match=f"{cut}"):
            load(cut)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"{empty}"):
        load_checkpoint(empty)



@pytest.mark.parametrize("damage", ["no-input-sizes", "bad-size", "old-no-body-size", "no-weights"])
def test_a_checkpoint_with_a_damaged_description_is_refused_naming_the_file(interrupted, tmp_path, damage):
    from reidtrain.checkpoint import CheckpointError
    from reidtrain.evaluate import load_trained

    ckpt = torch.load(interrupted["run"] / "model.pt", map_location="cpu", weights_only=True)
    if damage == "no-input-sizes":
        del ckpt["meta"]["input_sizes"]
        del ckpt["meta"]["body_size"]
    elif damage == "bad-size":
        ckpt["meta"]["input_sizes"]["head"] = ["wide", 3]
    elif damage == "old-no-body-size":   # a checkpoint of the releases before input_sizes, without its body size
        del ckpt["meta"]["input_sizes"]
        del ckpt["meta"]["body_size"]
        ckpt["meta"]["part_size"] = [16, 32]
    else:
        del ckpt["model"]
    bad = tmp_path / f"{damage}.pt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=f"{bad}"):
        load_trained(bad)


# ------------------------------------------------------------------------------------------------ recipes

RECIPE = """
[dataset]
name = "market"
root = "{root}"

[crop]
body_size = [64, 32]
part_size = [16, 32]
workers = 0

[model]
names = ["baseline"]

[train]
epochs = 1
batch_size = 4
workers = 0
tensorboard = false
"""


BAD_RECIPES = [
    ("[train]\nepochs = 1\nlearning_rate = 0.1\n", "learning_rate"),
    ("[train]\nepochs = '1'\n", "epochs"),
    ("[crop]\nbeta = [0.1]\n", "beta"),
    ("[crop]\nout = '/tmp/elsewhere'\n", "crop.out"),
    ("[train]\nout = '../../elsewhere'\n", "train.out"),
    ("[eval]\nout = '/'\n", "eval.out"),
    ("[model]\nnames = ['../../etc']\n", "names"),
    ("[reciepe]\nname = 'x'\n", "reciepe"),
]


def _bad_recipe(tmp_path: Path, edit: str) -> Path:
    table = edit.split("]")[0] + "]"
    text = RECIPE.format(root=tmp_path / "data")
    if table in text:  # the edited table replaces the recipe's own
        start = text.index(table)
        end = text.find("\n[", start + 1)
        text = text[:start] + (text[end + 1:] if end != -1 else "")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text + "\n" + edit)
    return recipe


@pytest.mark.parametrize("edit, named", BAD_RECIPES)
def test_a_bad_recipe_is_refused_naming_the_key(tmp_path, edit, named):
    from pipelines.runner import RecipeError, load_recipe

    recipe = _bad_recipe(tmp_path, edit)
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe)
    assert str(recipe) in str(e.value) and named in str(e.value).replace("'", "")


@pytest.mark.parametrize("edit, named", [BAD_RECIPES[0], BAD_RECIPES[4]])
def test_run_refuses_a_bad_recipe_before_writing_anything(tmp_path, edit, named):
    recipe = _bad_recipe(tmp_path, edit)
    out = tmp_path / "out"
    r = fk.cli("run", recipe, "--out", out, "--no-progress", timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr[-2000:]
    msg = " ".join(r.stderr.split()).replace("'", "")
    assert str(recipe) in msg and named in msg and "Traceback" not in msg, msg
    assert not out.exists() and not (tmp_path / "elsewhere").exists()


def test_run_does_not_delete_a_cache_it_did_not_make(tmp_path):
    """A user's existing OUT/cache (e.g. hours of `crop`), then `run recipe --out OUT`: it must be refused (the folder
    named), never deleted."""
    root = fk.synth_market(tmp_path / "data")
    out = tmp_path / "out"
    mine = out / "cache" / "my-notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("hours of work")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(root=root))
    r = fk.cli("run", recipe, "--out", out, "--no-progress", timeout=300)
    assert mine.read_text() == "hours of work", "run deleted OUT/cache, which it had not made"
    msg = " ".join(r.stderr.split())
    assert r.returncode == 1 and "was not made by `run`" in msg and str(out / "cache") in msg, msg

"""ImageNet pre-training (`cli.py pretrain`): the ILSVRC2012 layout reader, the loader's geometry and reduced
decoding, exact resume, and pretrain -> train --init-from end to end through the command line, on a tiny
ImageNet-layout folder generated here."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import faultkit as fk
from reidtrain.checkpoint import load_checkpoint
from reidtrain.checkpoint import CheckpointError
from reidtrain.imagenet import (ImageNetDataset, ImageNetLayoutError, ImageReadError, center_box, load_region,
                                random_resized_box, random_shifted_box, reduction, scale_box, scan_imagenet)
from reidtrain.pretrain import PretrainConfig, backbone_state, branch_batch, build_pretrain_model, pretrain
from test_data import write_tiny_cache

WNIDS = ("n01440764", "n01443537", "n01484850")
TINY = dict(input_size=(32, 16), batch_size=4, workers=0, tensorboard=False, epochs=2, lr=0.02)

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line_error(r, *expected: str) -> str:
    """Exit 1, no traceback, one 'error:' line holding every `expected` text."""
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-4000:]
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-4000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def _image(label: int, k: int, size: tuple[int, int]) -> Image.Image:
    """A class-coloured image with a little texture (so classes are learnable)."""
    rng = np.random.default_rng(label * 100 + k)
    w, h = size
    base = np.zeros((h, w, 3), np.uint8)
    base[..., label % 3] = 180
    noise = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(base + noise)


def make_imagenet(root: Path, val: str = "csv", per_class: int = 4, val_per_class: int = 2,
                  size: tuple[int, int] = (40, 30)) -> Path:
    """train/<wnid>/<wnid>_N.JPEG; val flat + LOC_val_solution.csv (val="csv") or val/<wnid>/ ("folders")."""
    for label, wnid in enumerate(WNIDS):
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        for k in range(per_class):
            _image(label, k, size).save(folder / f"{wnid}_{k}.JPEG", quality=90)
    rows, n = [], 0
    for label, wnid in enumerate(WNIDS):
        for k in range(val_per_class):
            n += 1
            name = f"ILSVRC2012_val_{n:08d}"
            folder = root / "val" / (wnid if val == "folders" else "")
            folder.mkdir(parents=True, exist_ok=True)
            _image(label, 50 + k, size).save(folder / f"{name}.JPEG", quality=90)
            rows.append((name, f"{wnid} 1 2 30 20 {wnid} 3 4 20 10"))
    if val == "csv":
        with open(root / "LOC_val_solution.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["ImageId", "PredictionString"])
            writer.writerows(rows)
    return root


# ----------------------------------------------------------------------------------------------- the layout
def test_val_as_csv_and_as_class_folders_read_the_same_labels(tmp_path):
    flat = scan_imagenet(make_imagenet(tmp_path / "flat", "csv"))
    folders = scan_imagenet(make_imagenet(tmp_path / "folders", "folders"))
    for ds in (flat, folders):
        assert ds.classes == list(WNIDS)
        assert len(ds.train) == 12 and ds.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        assert ds.train.path(5) == ds.root / "train" / WNIDS[1] / f"{WNIDS[1]}_1.JPEG"
        assert ds.train.path(5).is_file()
        assert not ds.skipped
    assert flat.val_source.endswith("LOC_val_solution.csv") and folders.val_source == "class folders"
    by_name = {Path(flat.val.relative(i)).name: int(flat.val.labels[i]) for i in range(len(flat.val))}
    by_folder = {Path(folders.val.relative(i)).name: int(folders.val.labels[i]) for i in range(len(folders.val))}
    assert by_name == by_folder and sorted(by_name.values()) == [0, 0, 1, 1, 2, 2]


def test_the_csv_is_found_beside_the_kaggle_layout_and_non_images_are_reported(tmp_path):
    root = make_imagenet(tmp_path / "k" / "ILSVRC" / "Data" / "CLS-LOC", "csv")
    (root / "LOC_val_solution.csv").rename(tmp_path / "k" / "LOC_val_solution.csv")
    (root / "train" / WNIDS[0] / "notes.txt").write_text("x")
    ds = scan_imagenet(root)
    assert ds.val_source == str((tmp_path / "k" / "LOC_val_solution.csv").resolve()) and len(ds.val) == 6
    assert ds.skipped == [str(root / "train" / WNIDS[0] / "notes.txt")]


@pytest.mark.parametrize("damage, message", [
    (lambda r: __import__("shutil").rmtree(r / "train"), "no train/ folder"),
    (lambda r: [__import__("shutil").rmtree(p) for p in (r / "train").iterdir()], "no class folders"),
    (lambda r: [p.unlink() for p in (r / "train" / WNIDS[1]).iterdir()], f"{WNIDS[1]}: the class folder holds no"),
    (lambda r: (r / "train" / "loose.JPEG").write_bytes(b"x"), "loose.JPEG: an image directly in train/"),
    (lambda r: (r / "LOC_val_solution.csv").write_text(
        (r / "LOC_val_solution.csv").read_text().replace(WNIDS[2], "n99999999", 1)),
     "LOC_val_solution.csv:6: ILSVRC2012_val_00000005 is labelled 'n99999999', which is not a class"),
    (lambda r: (r / "val" / "ILSVRC2012_val_00000099.JPEG").write_bytes(b"x"),
     "ILSVRC2012_val_00000099.JPEG: no row for 'ILSVRC2012_val_00000099'"),
    (lambda r: (r / "val" / "ILSVRC2012_val_00000002.JPEG").unlink(),
     "1 listed image(s) not in"),
    (lambda r: (r / "LOC_val_solution.csv").unlink(), "flat validation images need LOC_val_solution.csv"),
    (lambda r: (r / "LOC_val_solution.csv").write_text("id,label\n"), "line 1 must be the header"),
    (lambda r: __import__("shutil").rmtree(r / "val"), "no val/ folder"),
])
def test_a_bad_layout_is_one_clear_error_naming_the_file(tmp_path, damage, message):
    root = make_imagenet(tmp_path / "in", "csv")
    damage(root)
    with pytest.raises(ImageNetLayoutError) as e:
        scan_imagenet(root)
    assert message in str(e.value), str(e.value)


def test_a_val_class_folder_of_an_unknown_wnid_is_refused(tmp_path):
    root = make_imagenet(tmp_path / "in", "folders")
    (root / "val" / WNIDS[0]).rename(root / "val" / "n00000001")
    with pytest.raises(ImageNetLayoutError, match=r"val/n00000001: val class folder 'n00000001' is not a class"):
        scan_imagenet(root)


def test_an_unreadable_image_stops_pretrain_naming_the_file(tmp_path):
    root = make_imagenet(tmp_path / "in", "csv")
    bad = root / "train" / WNIDS[2] / f"{WNIDS[2]}_3.JPEG"
    bad.write_bytes(b"not a jpeg at all")
    r = fk.cli("pretrain", root, "--out", tmp_path / "run", "--input-size", "32x16", "--batch-size", "4",
               "--workers", "1", "--epochs", "1", "--no-tensorboard", "--no-progress", "--device", "cpu")
    one_line_error(r, str(bad), "not a readable image")
    with pytest.raises(ImageReadError, match="empty image file"):
        bad.write_bytes(b"")
        load_region(bad, 8, 8, lambda h, w: (0, 0, h, w))


# --------------------------------------------------------------------------------------- geometry, decoding
def test_random_resized_boxes_stay_inside_with_the_aspect_relative_to_the_output():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = random_resized_box(rng, 375, 500, 384, 192)
        assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
        assert 0.5 * 3 / 4 - 0.02 <= w / h <= 0.5 * 4 / 3 + 0.02          # output aspect w/h = 0.5
        assert 0.08 * 375 * 500 * 0.9 <= h * w <= 375 * 500
    # the fallback (no draw fits): the largest centred box in the aspect range
    top, left, h, w = random_resized_box(rng, 10, 400, 16, 16, scale=(1.0, 1.0))
    assert (h, w) == (10, round(10 * 4 / 3)) and left == (400 - w) // 2
    assert center_box(375, 500, 224, 224) == (23, 86, 328, 328)            # 87.5 % of the shorter side, centred
    assert center_box(375, 500, 384, 192)[2:] == (328, 164)
    assert reduction(400, 500, 100, 100) == 4 and reduction(199, 500, 100, 100) == 1
    assert reduction(1600, 1600, 100, 200) == 8
    for _ in range(50):   # resize-crop: the validation box's size at a random position
        top, left, h, w = random_shifted_box(rng, 375, 500, 224, 224)
        assert (h, w) == (328, 328) and 0 <= top <= 375 - h and 0 <= left <= 500 - w
    assert scale_box((100, 200, 400, 400), 0.25, 0.25, (150, 200)) == (25, 50, 100, 100)


def test_reduced_decoding_matches_full_decoding_closely(tmp_path):
    path = tmp_path / "big.JPEG"
    _image(1, 0, (800, 600)).resize((800, 600)).save(path, quality=95)
    full = load_region(path, 64, 64, lambda h, w: (100, 200, 400, 400), reduced=False)
    fast = load_region(path, 64, 64, lambda h, w: (100, 200, 400, 400), reduced=True)  # decoded at 1/4
    assert full.shape == fast.shape == (64, 64, 3)
    assert np.abs(full.astype(int) - fast.astype(int)).mean() < 12
    assert np.abs(full.astype(float).mean((0, 1)) - fast.astype(float).mean((0, 1))).max() < 3


def test_dataset_samples_are_a_function_of_the_seed_and_val_is_deterministic(tmp_path):
    ds = scan_imagenet(make_imagenet(tmp_path / "in", "csv"))
    train = ImageNetDataset(ds.train, (32, 16))
    a, b, c = train[(3, 11)], train[(3, 11)], train[(3, 12)]
    assert a["image"].dtype == torch.uint8 and a["image"].shape == (3, 32, 16) and a["label"] == 0
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    val = ImageNetDataset(ds.val, (32, 16))
    assert torch.equal(val[0]["image"], val[0]["image"])


def test_strips_feed_the_part_branches_and_the_weights_fit_every_finetuning_variant():
    x = torch.arange(2 * 3 * 8 * 4, dtype=torch.float32).view(2, 3, 8, 4)
    strips = branch_batch(x, "strips")
    assert torch.equal(strips["body"], x) and torch.equal(strips["head"], x[:, :, :2])
    assert torch.equal(strips["lower_leg"], x[:, :, 6:])
    assert all(v is x for v in branch_batch(x, "whole").values())
    from reidtrain.model import build_model
    for name in ("baseline", "intra-inter"):
        weights, dropped = backbone_state(build_pretrain_model(name, 10, (32, 16)))
        target = build_model(name, 7).state_dict()
        assert dropped and all(k.startswith("classifier.") for k in dropped)
        assert set(target) - set(weights) == {k for k in target if k.startswith("classifier.")}
        assert all(target[k].shape == v.shape for k, v in weights.items())


# ------------------------------------------------------------------------------------------------ training
def test_killed_and_resumed_pretraining_equals_the_uninterrupted_run(tmp_path):
    root = make_imagenet(tmp_path / "in", "csv")
    straight = pretrain(PretrainConfig(root=root, out=tmp_path / "straight", seed=5, **TINY), progress=False)
    cfg = PretrainConfig(root=root, out=tmp_path / "killed", seed=5, **TINY)

    class Killed(Exception):
        pass

    def kill(epoch, step, loss):
        if epoch == 2 and step == 1:
            raise Killed

    with pytest.raises(Killed):
        pretrain(cfg, progress=False, on_step=kill)
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = pretrain(cfg, resume=True, progress=False)
    assert [r["epoch"] for r in resumed.history] == [2]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight.history]
    with pytest.raises(CheckpointError, match="lr"):
        pretrain(PretrainConfig(root=root, out=tmp_path / "killed", seed=5, **{**TINY, "lr": 0.5}), resume=True,
                 progress=False)
    _image(0, 9, (40, 30)).save(root / "train" / WNIDS[0] / "extra.JPEG")   # the folder changed
    with pytest.raises(CheckpointError, match="the ImageNet folder changed"):
        pretrain(PretrainConfig(root=root, out=tmp_path / "killed", seed=5, **{**TINY, "epochs": 3}), resume=True,
                 progress=False)


def test_pretraining_learns_a_fixed_batch(tmp_path):
    # all 12 images in one batch, no augmentation randomness beyond the crop: 25 epochs reach train top-1 1.0
    root = make_imagenet(tmp_path / "in", "folders")
    cfg = PretrainConfig(root=root, out=tmp_path / "run", **{**TINY, "epochs": 25, "batch_size": 12,
                                                               "scale_min": 1.0, "flip": False, "lr_step": 100})
    history = pretrain(cfg, progress=False).history
    assert history[-1]["top1"] == 1.0, [r["top1"] for r in history]
    assert history[-1]["loss"] < history[0]["loss"] / 3


def test_pretrain_then_train_init_from_through_the_cli(tmp_path):
    root = make_imagenet(tmp_path / "in", "csv")
    run = tmp_path / "pre"
    config = tmp_path / "pretrain.toml"   # settings from a config file's [pretrain] table, the rest as flags
    config.write_text("[pretrain]\ninput_size = [64, 32]\nbatch_size = 4\nepochs = 2\n")
    r = fk.cli("pretrain", root, "--config", config, "--out", run, "--workers", "1", "--no-progress", "--device",
               "cpu", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "val top-1" in r.stdout and "at 64x32" in r.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(row["val_images"] == 6 and 0 <= row["val_top1"] <= row["val_top5"] == 1.0 for row in rows)
    assert [row["lr"] for row in rows] == [0.01, 0.01]
    final = load_checkpoint(run / "model.pt")
    assert not [k for k in final["model"] if k.startswith("classifier.")]
    assert final["meta"]["classes"] == list(WNIDS) and final["meta"]["dropped"]
    # a second pretrain into the same folder is refused; --resume of a finished run does nothing more
    again = fk.cli("pretrain", root, "--out", run, "--input-size", "64x32", "--no-progress", "--device", "cpu")
    one_line_error(again, "holds a run")

    cache = write_tiny_cache(tmp_path / "cache", train_ids=3, per_id=4)
    r = fk.cli("train", "--cache", cache, "--out", tmp_path / "fine", "--model", "intra-inter", "--body-size",
               "64x32", "--part-size", "16x32", "--batch-size", "4", "--epochs", "1", "--workers", "0",
               "--init-from", run / "model.pt", "--no-progress", "--device", "cpu", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "fine" / "init_report.json").read_text())
    assert report["unexpected"] == [] and report["shape_mismatched"] == []
    assert report["missing"] and all(k.startswith("classifier.") for k in report["missing"]), report["missing"]
    assert len(report["matched"]) == len(final["model"])


def _rank_main(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    import os
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from reidkit.typedconfig import from_mapping
    result = pretrain(from_mapping(PretrainConfig, cfg), progress=False)
    torch.save(result.model.state_dict(), Path(out) / f"rank{rank}.pt")
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(result.history))


@pytest.mark.slow
def test_two_process_pretraining_keeps_ranks_in_sync_and_validates_every_image_once(tmp_path):
    import torch.multiprocessing as mp

    from reidkit.typedconfig import to_dict
    from test_ddp import _free_port
    root = make_imagenet(tmp_path / "in", "csv", per_class=4, val_per_class=3)   # 9 val images: 5 + 4 per rank
    cfg = PretrainConfig(root=root, out=tmp_path / "run", **{**TINY, "epochs": 1})
    mp.spawn(_rank_main, args=(2, _free_port(), to_dict(cfg), str(tmp_path)), nprocs=2, join=True)
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "the two ranks' weights diverged"
    (row,) = json.loads((tmp_path / "rank0.json").read_text())
    assert row["images"] == 8 and row["val_images"] == 9   # train: 2 ranks x 1 full batch of 4 (of 6 each)
    assert json.loads((tmp_path / "rank1.json").read_text()) == []
    final = load_checkpoint(tmp_path / "run" / "model.pt")
    assert final["meta"]["world_size"] == 2
    assert all(torch.equal(final["model"][k], w0[k]) for k in final["model"])


def test_the_command_is_registered_and_its_help_names_the_defaults():
    env = {"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    listed = fk.cli("--help", env=env)
    assert listed.returncode == 0 and any(line.split()[1:2] == ["pretrain"] for line in listed.stdout.splitlines()
                                          if line.startswith("│ ")), listed.stdout
    out = fk.cli("pretrain", "--help", env=env)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "(default: 9)" in text and "(default: 0.01)" in text and "(default: 3)" in text and "(default: 32)" in text

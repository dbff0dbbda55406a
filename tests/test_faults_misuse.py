"""Fault suite of issue 14, "safe and clear under misuse": what a new user's wrong flags, damaged inputs and
unlucky disks do. Every test runs the real command line (`python cli.py ...`) on real files: a synthetic
Market-1501 layout cropped at small sizes, a model trained on it for one epoch, and breakage made by
tests/faultkit.py. What each fault now does (also in the README's fault table):

fault                                              outcome
train split smaller than --batch-size              trains on one partial batch per epoch (never 0 images)
train split of 1 image                             exit 1 before any work ("needs at least 2"), nothing written
train into a finished run, no --resume / --force   exit 1 naming the run and both flags; the run untouched
train --force into a run                           old model.pt, checkpoints, metrics, tb/, eval/ removed first:
  ... interrupted                                  never the old last.pt under the new config.json
two trains into one --out                          the second exits 3 naming the first's pid; the first finishes
evaluate / export of a run a train is writing      exit 3 naming the train's pid
--out is a FIFO / directory / device node          exit 1 "is a FIFO / directory / character device", unchanged
--out is a symlink                                 written through: the target replaced atomically, link kept
a split with no rows (every image failed)          `info` warns naming the split, the failures, the first reason;
                                                   `evaluate` exits 1 with the same
`run` without dataset.root / unknown dataset /     exit 1, one line naming the value, no traceback
  unknown pose source / wrong pose option
full disk / read-only disk in train, evaluate,     exit 1, one line naming the file; no temporary, no partial
  extract, export                                  eval/; export does not retry with dynamo and blame it
--device tpu / cuda without CUDA, --seed -1,       exit 1, one line naming the option
  --amp fp16 on the CPU
show on a truncated part file                      exit 1 naming the part file
train --crops stored, an empty stored crop         exit 1 naming the image and column
pose-gan CSV value > int32 / not an integer        exit 1 naming file:line
train --config DIR                                 exit 1 "is a directory"
junk --pose-checkpoint                             exit 1 "not a checkpoint"
crop --limit -1 / --threshold 5 / --body-size 3x1  exit 1 naming the setting; --body-size '' a usage error
export --opset 5                                   exit 1 naming the opsets the exporter writes, no file
show --out x.jpg                                   exit 1 (the sheet is a PNG), no file
junk images (pid -1)                               counted in the crop summary and the report summary
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import faultkit as fk

SIZES = ("--body-size", "64x32", "--part-size", "16x32")
TRAIN = ("--batch-size", "4", "--workers", "0", "--seed", "3", "--device", "cpu", "--no-tensorboard",
         "--no-progress", *SIZES)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return fk.synth_market(tmp_path_factory.mktemp("misuse-data") / "market")


@pytest.fixture(scope="module")
def cache(data, tmp_path_factory) -> Path:
    """The whole tiny dataset cropped at small sizes (27 train, 7 query, 25 gallery images)."""
    from posecrop.crop_stage import CropConfig, run_crop

    out = tmp_path_factory.mktemp("misuse-cache") / "cache"
    run_crop(CropConfig(root=data, out=out, workers=0, body_size=(64, 32), part_size=(16, 32), progress=False))
    return out


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory) -> Path:
    """A finished one-epoch run with an evaluation (RUN/eval)."""
    run = tmp_path_factory.mktemp("misuse-run") / "run"
    r = fk.cli("train", "--cache", cache, "--out", run, "--epochs", "1", *TRAIN, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = fk.cli("evaluate", run, "--cache", cache, "--no-progress", "--workers", "0", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "eval" / "metrics.json").is_file()
    return run


def _copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _msg(r: subprocess.CompletedProcess) -> str:
    return " ".join((r.stdout + r.stderr).split())


def assert_one_line_error(r: subprocess.CompletedProcess, code: int = 1, *expected: str) -> str:
    """Exit `code`, no traceback, one 'error:' line holding every `expected` text (after unwrapping)."""
    assert r.returncode == code, r.stdout[-2000:] + r.stderr[-4000:]
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-4000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    msg = _msg(r)
    for text in expected:
        assert text in msg, msg
    return msg


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _config_lr(path: Path) -> float:
    """The learning rate a checkpoint was trained with (memory-mapped: the tensors are not read)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return float(ckpt["meta"]["config"]["lr"])


# --------------------------------------------------------------------------------- 1. training that trains nothing


def test_a_split_smaller_than_the_batch_trains_on_one_partial_batch(cache, tmp_path):
    out = tmp_path / "run"
    r = fk.cli("train", "--cache", cache, "--out", out, "--epochs", "2", *TRAIN, "--batch-size", "32", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _metrics(out)
    assert [row["images"] for row in rows] == [27, 27], rows  # every training image, every epoch
    assert all(row["loss"] > 0 and row["images_per_s"] > 0 for row in rows)
    assert (out / "model.pt").is_file()


def test_a_split_of_one_image_is_refused_before_any_work(data, tmp_path):
    from posecrop.crop_stage import CropConfig, run_crop

    one = tmp_path / "one"
    run_crop(CropConfig(root=data, out=one, workers=0, limit=1, body_size=(64, 32), part_size=(16, 32),
                        progress=False))
    out = tmp_path / "run"
    r = fk.cli("train", "--cache", one, "--out", out, "--epochs", "2", *TRAIN, timeout=300)
    assert_one_line_error(r, 1, f"{one}: the train split has 1 image(s)", "at least 2")
    assert not (out / "model.pt").exists() and not (out / "metrics.jsonl").exists()
    assert not (out / "checkpoints").exists() and not (out / "config.json").exists()


# ------------------------------------------------------------------------------------ 2. unprotected run folders


def test_train_into_a_finished_run_is_refused_without_resume_or_force(trained, cache, tmp_path):
    run = _copy_run(trained, tmp_path / "run")
    before = {p.relative_to(run): (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    r = fk.cli("train", "--cache", cache, "--out", run, "--epochs", "1", *TRAIN, timeout=300)
    assert_one_line_error(r, 1, f"{run}: holds a training run", "--resume", "--force")
    after = {p.relative_to(run): (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*")
             if p.is_file() and p.name != ".lock"}
    assert after == before  # model.pt, last.pt, metrics, config and eval/ untouched


def test_force_replaces_the_run_and_an_interrupted_force_never_mixes_old_and_new(trained, cache, tmp_path):
    run = _copy_run(trained, tmp_path / "run")
    last, config = run / "checkpoints" / "last.pt", run / "config.json"
    old_lr = _config_lr(last)
    new_lr = 0.05
    assert old_lr != new_lr
    p = fk.popen("train", "--cache", cache, "--out", run, "--epochs", "3", *TRAIN, "--lr", str(new_lr), "--force")
    mixed = []

    def new_config_written() -> bool:
        try:
            lr = json.loads(config.read_text())["train"]["lr"]
        except (OSError, ValueError, KeyError):
            return False
        if lr != new_lr:
            return False
        # from the moment the new config.json exists, nothing of the old run may be beside it
        if (run / "eval").exists() or (run / "model.pt").exists():
            mixed.append("old eval/ or model.pt beside the new config.json")
        try:
            if _config_lr(last) != new_lr:
                mixed.append("old last.pt beside the new config.json")
        except FileNotFoundError:
            pass
        return last.exists()  # the new run's first checkpoint

    fk.wait_for(new_config_written, p, timeout=300)
    fk.kill(p)  # SIGKILL: the forced run is interrupted after its first epoch
    assert not mixed, mixed
    assert _config_lr(last) == new_lr and not (run / "eval").exists() and not (run / "model.pt").exists()
    r = fk.cli("train", "--cache", cache, "--out", run, "--epochs", "3", *TRAIN, "--lr", str(new_lr), "--resume",
               timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [row["epoch"] for row in _metrics(run)] == [1, 2, 3] and _config_lr(run / "model.pt") == new_lr
    both = fk.cli("train", "--cache", cache, "--out", run, *TRAIN, "--resume", "--force")
    assert both.returncode == 2 and "give one" in _msg(both)


def test_two_trains_into_one_out_the_second_refuses_naming_the_first(cache, trained, tmp_path):
    out = tmp_path / "run"
    lock = out / ".lock"
    p = fk.popen("train", "--cache", cache, "--out", out, "--epochs", "2", *TRAIN)
    try:
        fk.wait_for(lambda: lock.is_file() and lock.read_text().startswith(f"{p.pid} "), p, timeout=300)
        assert fk.stop(p), "the first train ended before the second started"
        second = fk.cli("train", "--cache", cache, "--out", out, "--epochs", "2", *TRAIN, timeout=300)
        assert_one_line_error(second, 3, f"run folder {out} is in use by pid {p.pid}", str(lock))
        # readers of the run (evaluate, export) are refused too while it is being trained
        ev = fk.cli("evaluate", out, "--cache", cache, "--no-progress", timeout=300)
        assert_one_line_error(ev, 3, f"in use by pid {p.pid}")
        ex = fk.cli("export", out, "--out", tmp_path / "m.onnx", timeout=300)
        assert_one_line_error(ex, 3, f"in use by pid {p.pid}")
        assert not (tmp_path / "m.onnx").exists() and not (out / "eval").exists()
        fk.resume(p)
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    finally:
        if p.poll() is None:
            fk.resume(p)
            fk.kill(p)
    assert [row["epoch"] for row in _metrics(out)] == [1, 2]  # every epoch once, none lost or interleaved
    # a second evaluate into a folder an evaluate holds: the same lock, exclusive
    from reidtrain.runlock import RunLock
    with RunLock(tmp_path / "ev" / ".lock", "evaluation folder"):
        busy = fk.cli("evaluate", trained, "--cache", cache, "--out", tmp_path / "ev", "--no-progress", timeout=300)
    assert_one_line_error(busy, 3, f"in use by pid {os.getpid()}")


# ----------------------------------------------------------------------------- 3. whatever is at --out


def _kind(path: Path) -> str:
    mode = os.lstat(path).st_mode
    return ("fifo" if stat.S_ISFIFO(mode) else "dir" if stat.S_ISDIR(mode) else "chr" if stat.S_ISCHR(mode)
            else "link" if stat.S_ISLNK(mode) else "file" if stat.S_ISREG(mode) else "other")


def test_outputs_refuse_devices_directories_and_fifos_and_write_through_symlinks(cache, trained, tmp_path):
    targets = {}
    os.mkfifo(tmp_path / "fifo.png")
    targets["fifo.png"] = ("fifo", "is a FIFO")
    (tmp_path / "dir.png").mkdir()
    targets["dir.png"] = ("dir", "is a directory")
    if os.geteuid() == 0:  # a device node of our own (as /dev/null: char 1,3) - never the real /dev/null
        os.mknod(tmp_path / "null.png", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        targets["null.png"] = ("chr", "is a character device")
    for name, (kind, text) in targets.items():
        r = fk.cli("show", cache, "--out", tmp_path / name, "--n", "2")
        assert_one_line_error(r, 1, f"{tmp_path / name}: {text}, not a regular file")
        assert _kind(tmp_path / name) == kind
    fifo = tmp_path / "fifo.parquet"
    os.mkfifo(fifo)
    r = fk.cli("extract", trained, "--cache", cache, "--out", fifo, "--workers", "0", "--no-progress", timeout=300)
    assert_one_line_error(r, 1, f"{fifo}: is a FIFO")
    assert _kind(fifo) == "fifo"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    # a symbolic link is written through: its target is replaced (atomically), the link stays
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "sheet.png"
    target.write_bytes(b"old")
    link = tmp_path / "link.png"
    link.symlink_to(Path("real") / "sheet.png")
    r = fk.cli("show", cache, "--out", link, "--n", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _kind(link) == "link" and target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------ 4. an empty split is named, with why


def test_a_split_whose_every_image_failed_is_named_with_the_reason(data, trained, tmp_path):
    root = fk.copy_dataset(data, tmp_path / "data")
    query = sorted((root / "query").glob("*.jpg"))
    for img in query:
        img.write_bytes(fk.garbage())
    out = tmp_path / "cache"
    r = fk.cli("crop", "--root", root, "--out", out, "--workers", "0", *SIZES, "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    info = fk.cli("info", out)
    assert info.returncode == 0, info.stderr[-3000:]
    msg = _msg(info)
    assert f"split 'query' has no rows: {len(query)} image(s) of it failed in {out / 'crop_report.jsonl'}" in msg
    assert f"first reason: {root}/query/" in msg and "not a readable image" in msg, msg
    ev = fk.cli("evaluate", trained, "--cache", out, "--out", tmp_path / "eval", "--no-progress", timeout=300)
    assert_one_line_error(ev, 1, "split 'query'", f"{len(query)} image(s) of it failed",
                          f"first reason: {root}/query/", "not a readable image")
    assert not (tmp_path / "eval" / "metrics.json").exists()


# --------------------------------------------------------------------- 5. tracebacks where one line was expected


@pytest.mark.parametrize("sets, expected", [
    ((), "dataset root data/Market-1501-v15.09.15 does not exist"),
    (("dataset.name=nope",), "unknown dataset 'nope'"),
    (("crop.pose_source=nope",), "unknown pose source 'nope'"),
    (("crop.pose_options.bogus=1",), "pose option 'bogus' is not taken"),
], ids=["no-root", "unknown-dataset", "unknown-pose-source", "wrong-pose-option"])
def test_run_turns_crop_stage_errors_into_one_line(data, tmp_path, sets, expected):
    args = [a for s in sets for a in ("--set", s)]
    if sets:
        args += ["--set", f"dataset.root={data}"]
    r = fk.cli("run", "pipelines/market.toml", "--out", tmp_path / "out", "--no-progress", *args, timeout=300)
    assert_one_line_error(r, 1, expected)
    assert not (tmp_path / "out" / "cache").exists() or not list((tmp_path / "out" / "cache").rglob("*.parquet"))


def _on_small_disk(tmp: Path, size: str, command: str, read_only: bool = False) -> tuple[subprocess.CompletedProcess,
                                                                                        list[str]]:
    """Run `python cli.py COMMAND` with a tmpfs of `size` on tmp/disk (private mount namespace); returns the
    result and what is left on the disk (find's listing, relative)."""
    disk = tmp / "disk"
    disk.mkdir(exist_ok=True)
    ro = f" && mount -o remount,ro {disk}" if read_only else ""
    script = (f"mount -t tmpfs -o size={size} tmpfs {disk}{ro} && {{ {sys.executable} cli.py {command}; rc=$?; "
              f"cd {disk} && find . -mindepth 1 > {tmp}/left.txt; exit $rc; }}")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=fk.REPO, capture_output=True, text=True,
                       timeout=300, env=fk.child_env())
    left = (tmp / "left.txt").read_text().split() if (tmp / "left.txt").exists() else []
    return r, left


@pytest.mark.parametrize("command", ["train", "evaluate", "extract", "export"])
def test_a_full_or_read_only_disk_is_one_line_and_leaves_nothing_half_written(cache, trained, tmp_path, command):
    if not fk.private_mounts(tmp_path):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN and unshare)")
    disk = tmp_path / "disk"
    cmd = {"train": f"train --cache {cache} --out {disk}/run --epochs 1 {' '.join(TRAIN)}",
           "evaluate": f"evaluate {trained} --cache {cache} --out {disk}/eval --workers 0 --no-progress",
           "extract": f"extract {trained} --cache {cache} --out {disk}/features.parquet --workers 0 --no-progress",
           "export": f"export {trained} --out {disk}/model.onnx --no-verify"}[command]
    # room for the small files (a lock, config.json) but not for a checkpoint / report / features / graph
    size = {"train": "256k", "evaluate": "64k", "extract": "64k", "export": "256k"}[command]
    full, left = _on_small_disk(tmp_path, size, cmd)
    msg = assert_one_line_error(full, 1, str(disk))
    assert re.search("No space left on device|disk full", msg), msg
    assert "dynamo" not in msg  # export: a full disk is not blamed on (nor retried with) the other exporter
    assert not [name for name in left if name.endswith(".tmp") or ".tmp/" in name], left
    finished = {"train": "./run/model.pt", "evaluate": "./eval/metrics.json", "extract": "./features.parquet",
                "export": "./model.onnx"}[command]
    assert finished not in left, left
    if command == "evaluate":  # no partial report set: nothing but the folder's lock
        assert sorted(left) == ["./eval", "./eval/.lock"], left
    ro, left = _on_small_disk(tmp_path, "1m", cmd, read_only=True)
    assert_one_line_error(ro, 1, "Read-only file system", str(disk))
    assert left == []


@pytest.mark.parametrize("args, expected", [
    (("--device", "tpu"), "device 'tpu'"),
    (("--seed", "-1"), "seed must be >= 0, got -1"),
    (("--amp", "fp16"), "--amp fp16 needs a CUDA device"),
], ids=["device-tpu", "seed-negative", "amp-fp16-cpu"])
def test_bad_training_options_are_one_line(cache, tmp_path, args, expected):
    out = tmp_path / "run"
    r = fk.cli("train", "--cache", cache, "--out", out, "--epochs", "1", *TRAIN, *args, timeout=300)
    assert_one_line_error(r, 1, expected)
    assert not (out / "model.pt").exists() and not (out / "checkpoints").exists()


def test_evaluate_on_cuda_without_cuda_is_one_line(cache, trained, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    r = fk.cli("evaluate", trained, "--cache", cache, "--out", tmp_path / "eval", "--device", "cuda", timeout=300)
    assert_one_line_error(r, 1, "device 'cuda' asked but CUDA is not available")
    assert not (tmp_path / "eval").exists()


def test_show_names_a_truncated_part_file(cache, tmp_path):
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    part = sorted((copy / "gallery").glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    r = fk.cli("show", copy, "--out", tmp_path / "sheet.png")
    assert_one_line_error(r, 1, f"{part}: unreadable part file", "move it away")
    assert not (tmp_path / "sheet.png").exists()


def test_train_on_stored_crops_names_an_empty_crop(cache, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    part = sorted((copy / "train").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    rows = table.column("head").to_pylist()
    victim = table.column("image_id")[0].as_py()
    rows[0] = {**rows[0], "bytes": b""}
    i = table.column_names.index("head")
    table = table.set_column(i, table.schema.field(i), pa.array(rows, type=table.schema.field(i).type))
    pq.write_table(table, part)
    out = tmp_path / "run"
    r = fk.cli("train", "--cache", copy, "--out", out, "--epochs", "1", *TRAIN, "--crops", "stored",
               "--batch-size", "32", timeout=300)
    assert_one_line_error(r, 1, victim, "'head'", "empty image bytes")
    assert not (out / "model.pt").exists()


@pytest.mark.parametrize("value, expected", [("99999999999", "keypoint value 99999999999 out of range"),
                                             ("1.5", "non-integer keypoint value '1.5'")], ids=["int32", "float"])
def test_a_bad_posegan_value_names_the_file_and_line(data, tmp_path, value, expected):
    csv = tmp_path / "annotations.csv"
    ys = ",".join(["10"] * 18)
    xs = ",".join([value] + ["5"] * 17)
    csv.write_text(f"name:keypoints_y:keypoints_x\nok.jpg: [{ys}]: [{ys}]\nbad.jpg: [{ys}]: [{xs}]\n")
    r = fk.cli("crop", "--root", data, "--out", tmp_path / "cache", "--posegan-csv", csv, "--workers", "0",
               "--no-progress")
    assert_one_line_error(r, 1, f"{csv}:3: {expected}")
    assert not list((tmp_path / "cache").rglob("*.parquet"))


def test_train_config_that_is_a_directory_is_one_line(cache, tmp_path):
    r = fk.cli("train", "--cache", cache, "--out", tmp_path / "run", "--config", tmp_path, *TRAIN)
    assert_one_line_error(r, 1, f"{tmp_path}: is a directory")


def test_a_junk_pose_checkpoint_is_not_a_checkpoint(data, tmp_path):
    pytest.importorskip("mmpose")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(fk.garbage(5000))
    r = fk.cli("crop", "--root", data, "--out", tmp_path / "cache", "--pose-source", "mmpose", "--pose-checkpoint",
               junk, "--pose-config", "rtmpose-t_coco17-256x192", "--workers", "0", "--no-progress", timeout=300)
    msg = assert_one_line_error(r, 1, f"{junk}: not a checkpoint")
    assert "weights_only" not in msg and len(msg) < 400


# ------------------------------------------------------------------------------------------ 6. smaller misuse


@pytest.mark.parametrize("args, code, expected", [
    (("--limit", "-1"), 1, "limit must be >= 1"),
    (("--threshold", "5"), 1, "threshold is a joint confidence in [0, 1], got 5.0"),
    (("--body-size", "3x1"), 1, "body_size must be (height, width) in 8..4096"),
    (("--body-size", ""), 2, "expected HEIGHTxWIDTH"),
], ids=["limit-negative", "threshold-5", "size-3x1", "size-empty"])
def test_crop_refuses_meaningless_settings(data, tmp_path, args, code, expected):
    r = fk.cli("crop", "--root", data, "--out", tmp_path / "cache", "--workers", "0", "--no-progress", *args)
    assert r.returncode == code and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert expected in _msg(r)
    assert not list((tmp_path / "cache").rglob("*.parquet"))


def test_export_refuses_an_opset_it_cannot_write(trained, tmp_path):
    r = fk.cli("export", trained, "--out", tmp_path / "m.onnx", "--opset", "5", timeout=300)
    assert_one_line_error(r, 1, "--opset 5: the auto exporter writes opsets 7 to")
    assert len(r.stderr.splitlines()) <= 3 and not (tmp_path / "m.onnx").exists()


def test_show_refuses_a_name_that_is_not_png(cache, tmp_path):
    r = fk.cli("show", cache, "--out", tmp_path / "x.jpg")
    assert_one_line_error(r, 1, "x.jpg", ".png")
    assert not (tmp_path / "x.jpg").exists()


def test_junk_images_are_counted(data, tmp_path):
    root = fk.copy_dataset(data, tmp_path / "data")
    some = sorted((root / "bounding_box_test").glob("*.jpg"))[0]
    kp = fk.keypoints_file(root, f"bounding_box_test/{some.name}").read_text()
    fk.put(root, "bounding_box_test/-1_c1s1_000001_00.jpg", some.read_bytes(), kp)
    fk.put(root, "bounding_box_test/-1_c2s1_000002_00.jpg", some.read_bytes(), kp)
    junk = len(list(root.glob("*/-1_*.jpg")))
    assert junk >= 2  # the two added and those the synthetic dataset has
    out = tmp_path / "cache"
    r = fk.cli("crop", "--root", root, "--out", out, "--workers", "0", *SIZES, "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{junk} junk (pid -1, excluded by the protocol)" in _msg(r)
    (summary,) = fk.summaries(out)
    assert summary["excluded"] == junk and summary["skipped"] == 0
    assert not [i for i in fk.cache_rows(out) if i.split("/")[-1].startswith("-1_")]


# ------------------------------------------------------------------------------------------ 7. rough edges


def test_train_with_a_recipe_as_config_takes_its_crop_sizes_and_model(cache, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[crop]\nbody_size = [64, 32]\npart_size = [16, 32]\n[model]\nnames = ["baseline"]\n'
                      '[train]\nepochs = 1\nbatch_size = 4\nworkers = 0\ntensorboard = false\n')
    out = tmp_path / "run"
    r = fk.cli("train", "--cache", cache, "--out", out, "--config", recipe, "--device", "cpu", "--no-progress",
               timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    train = json.loads((out / "config.json").read_text())["train"]
    assert train["model"] == "baseline" and train["body_size"] == [64, 32]
    meta = json.loads((out / "config.json").read_text())["meta"]
    assert meta["input_sizes"] == {"body": [64, 32]}      # baseline reads one input: the whole image


def test_crop_with_a_recipe_as_config_reads_its_dataset_root(data, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'[dataset]\nname = "market"\nroot = "{data}"\n[crop]\nbody_size = [64, 32]\n'
                      f'part_size = [16, 32]\n')
    out = tmp_path / "cache"
    r = fk.cli("crop", "--config", recipe, "--out", out, "--workers", "0", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(fk.cache_rows(out)) == 59


def test_a_resume_with_one_changed_setting_names_only_that_one(trained, cache, tmp_path):
    run = _copy_run(trained, tmp_path / "run")
    r = fk.cli("train", "--cache", cache, "--out", run, "--epochs", "1", *TRAIN, "--erasing", "0.2", "--resume")
    msg = assert_one_line_error(r, 1, "cannot resume with a different configuration (augment.erasing: 0.5 -> 0.2)")
    assert "flip" not in msg


def test_automatic_threads_never_exceed_the_free_cores():
    from reidtrain.threads import auto_threads, free_cores

    cores = len(os.sched_getaffinity(0))
    assert auto_threads(0, default=1) == 1
    n = auto_threads(0, default=1024)
    assert 1 <= n <= cores and (n == 1 or n <= free_cores())
    assert auto_threads(workers=cores, default=1024) == 1


def test_ctrl_c_in_train_before_the_first_checkpoint_names_no_checkpoint(cache, tmp_path):
    out = tmp_path / "run"
    p = fk.popen("train", "--cache", cache, "--out", out, "--epochs", "5", *TRAIN, new_session=True)
    lock = out / ".lock"
    fk.wait_for(lambda: lock.is_file() and lock.read_text().startswith(f"{p.pid} "), p, timeout=300)
    assert fk.stop(p)
    if (out / "checkpoints" / "last.pt").exists():
        fk.resume(p)
        fk.kill(p)
        pytest.skip("the first epoch finished before the interrupt")
    fk.resume(p)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    msg = " ".join(err.split())
    if (out / "checkpoints" / "last.pt").exists():
        assert "--resume" in msg
    else:
        assert p.returncode == 1 and "nothing to resume" in msg and "last.pt" not in msg, msg

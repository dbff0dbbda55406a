"""Helpers of the fault suite (tests/test_faults_*.py): broken inputs made for real, and ways to run the real
commands under hostile conditions (SIGKILL, SIGSTOP, small file-size limits). Nothing here stands in for our code:
every test runs `python cli.py ...` or the public API on files these helpers write.

Broken inputs
    images:    zero_bytes, truncated_jpeg, garbage, png_bytes (a PNG named .jpg), grey_jpeg, rgba_png, cmyk_jpeg,
               png16, one_by_one, huge_flat_jpeg (10k x 10k, 1 MB on disk, never decoded by a sane reader)
    keypoints: openpose_text (any numbers, NaN / Infinity / null allowed, any length)
    names:     see UNPARSEABLE_NAMES
Processes
    cli / popen:            the real command line in a subprocess (cwd = repository root)
    popen_paused / pause_at: a command that stops itself at a named event (reidkit.pause), to kill it there
    wait_for / kill:        poll for a condition, SIGKILL a process we started
    stop / stopped / resume: SIGSTOP a process and wait until it is stopped, SIGCONT
    limit_file_size:        preexec_fn giving a child a small RLIMIT_FSIZE (writes past it fail with EFBIG)
    private_mounts:         whether a tmpfs can be mounted in a private mount namespace (small / read-only disks)
Reading results
    cache_rows, part_ids, leftovers, report_by_image
"""
from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MARKET_FOLDERS = ("bounding_box_train", "bounding_box_test", "query")
SPLIT_OF_FOLDER = {"bounding_box_train": "train", "bounding_box_test": "gallery", "query": "query"}


# ------------------------------------------------------------------------------------------------ datasets


def synth_market(root: Path) -> Path:
    """The `tiny` synthetic Market-1501 layout (about 60 images with OpenPose keypoints) under `root`."""
    from posecrop.synth import generate, preset

    generate(preset("tiny"), root, progress=False, preview=False)
    return root


def copy_dataset(src: Path, dst: Path) -> Path:
    """A private copy of a dataset folder (images and keypoints only) to break things in."""
    for folder in (*MARKET_FOLDERS, "keypoints"):
        shutil.copytree(src / folder, dst / folder)
    return dst


def replicate(src: Path, dst: Path, copies: int) -> int:
    """Copy a Market layout with keypoints `copies` times under new frame numbers; returns the image count."""
    n = 0
    for k in range(copies):
        for folder in MARKET_FOLDERS:
            for img in sorted((src / folder).glob("*.jpg")):
                parts = img.stem.split("_")
                parts[2] = f"{(int(parts[2]) + 100000 * k) % 1000000:06d}"
                stem = "_".join(parts)
                kp = (src / "keypoints" / folder / f"{img.stem}_keypoints.json").read_text()
                put(dst, f"{folder}/{stem}.jpg", img.read_bytes(), kp)
                n += 1
    return n


def keypoints_file(root: Path, rel: str) -> Path:
    """Where the OpenPose JSON of image `rel` lives in the dataset (mirror layout under ROOT/keypoints)."""
    p = Path(rel)
    return root / "keypoints" / p.parent / f"{p.stem}_keypoints.json"


def put(root: Path, rel: str, data: bytes | None, keypoints: str | None) -> None:
    """Write image `rel` (skipped when data is None) and its keypoint file (skipped when keypoints is None)."""
    if data is not None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    if keypoints is not None:
        kp = keypoints_file(root, rel)
        kp.parent.mkdir(parents=True, exist_ok=True)
        kp.write_text(keypoints)


# ------------------------------------------------------------------------------------------------ images


def person(w: int = 64, h: int = 128, seed: int = 0) -> np.ndarray:
    """An RGB pedestrian-like picture (noisy background, red shirt, blue trousers)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 140, (h, w, 3), dtype=np.uint8)
    img[int(h * 0.2):int(h * 0.5), int(w * 0.35):int(w * 0.65)] = (200, 30, 30)
    img[int(h * 0.5):int(h * 0.88), int(w * 0.38):int(w * 0.62)] = (30, 30, 160)
    return img


def encode(img: np.ndarray | Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    pil = img if isinstance(img, Image.Image) else Image.fromarray(img)
    buf = io.BytesIO()
    pil.save(buf, format=fmt, **kw)
    return buf.getvalue()


def zero_bytes() -> bytes:
    return b""


def truncated_jpeg(keep: float = 0.5, seed: int = 0) -> bytes:
    """A JPEG cut after `keep` of its bytes (what an interrupted download or copy leaves)."""
    data = encode(person(seed=seed), quality=90)
    return data[: max(2, int(len(data) * keep))]


def garbage(n: int = 3000, seed: int = 0) -> bytes:
    """Random bytes (no image format's signature)."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def png_bytes(img: np.ndarray | None = None) -> bytes:
    return encode(person() if img is None else img, "PNG")


def grey_jpeg() -> bytes:
    return encode(Image.fromarray(person()).convert("L"), quality=92)


def rgba_png(alpha: int = 0) -> bytes:
    """RGBA PNG; alpha 0 (fully transparent) by default: the colours must still be used, not the alpha."""
    img = person()
    return encode(np.dstack([img, np.full(img.shape[:2], alpha, np.uint8)]), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(Image.fromarray(person()).convert("CMYK"), quality=92)


def png16() -> bytes:
    """16-bit greyscale PNG (values 0-65535)."""
    return encode(Image.fromarray(person()[..., 0].astype(np.uint16) * 257), "PNG")


def one_by_one() -> bytes:
    return encode(person()[:1, :1], quality=95)


def huge_flat_jpeg(width: int = 10_000, height: int = 10_000) -> bytes:
    """A real, valid width x height JPEG of one grey (about 1 MB on disk, 100 M pixels decoded)."""
    return encode(Image.new("L", (width, height), 128), quality=50)


# an upright person in a 64 x 128 image (x, y), COCO-18 order (nose, neck, r_shoulder, ... l_ear)
UPRIGHT_POSE = np.array([[32, 14], [32, 26], [24, 28], [21, 44], [20, 58], [40, 28], [43, 44], [44, 58], [27, 62],
                         [27, 86], [27, 110], [37, 62], [37, 86], [37, 110], [30, 12], [34, 12], [28, 13], [36, 13]],
                        np.float32)

# names in a Market-1501 folder that the dataset reader cannot parse (relative to the folder)
UNPARSEABLE_NAMES = ("holiday_photo.jpg", "0003_c9s1_000001_01.jpg", "abcd_c1s1_000001_01.jpg", "0003-c1s1-1.jpg")


# ------------------------------------------------------------------------------------------------ keypoints


def openpose_text(values: Sequence | None, key: str = "pose_keypoints_2d") -> str:
    """OpenPose JSON with one person whose keypoint list is `values` as given (NaN / Infinity / None allowed,
    any length); None -> no `people` list at all."""
    if values is None:
        return json.dumps({"version": 1.3})
    return json.dumps({"version": 1.3, "people": [{key: list(values)}]}, allow_nan=True)


def flat_pose(xy: np.ndarray, score: float = 0.9) -> list[float]:
    """(18, 2) joint positions -> the 54 numbers x, y, c of OpenPose COCO-18."""
    out: list[float] = []
    for x, y in np.asarray(xy, np.float64).tolist():
        out += [x, y, score]
    return out


# ------------------------------------------------------------------------------------------------ processes


def cli(*args: str, timeout: float = 120, env: dict | None = None,
        preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """Run `python cli.py ARGS` from the repository root; captures text output."""
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=child_env(env), preexec_fn=preexec_fn)


def popen(*args: str, env: dict | None = None, preexec_fn: Callable[[], None] | None = None,
          new_session: bool = False) -> subprocess.Popen:
    """Start `python cli.py ARGS` (stdout discarded, stderr piped as text); new_session: in its own process
    group (for os.killpg, as a terminal's Ctrl-C). The child starts with SIGINT at its default disposition, as a
    command typed in a terminal does: a test suite started in the background of a non-interactive shell has
    SIGINT ignored, and Python then installs no KeyboardInterrupt handler, so a Ctrl-C test would see nothing."""
    def start() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if preexec_fn is not None:
            preexec_fn()

    return subprocess.Popen([sys.executable, "cli.py", *map(str, args)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=child_env(env), preexec_fn=start,
                            start_new_session=new_session)


def child_env(extra: dict | None = None) -> dict:
    """This environment plus OMP_NUM_THREADS=1 (unless set) and `extra`."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen | None = None, timeout: float = 90,
             poll: float = 0.002) -> None:
    """Poll `condition` until true; fails if `proc` ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before the awaited point: "
                                 f"{(proc.stderr.read() if proc.stderr else '')[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("the awaited point was not reached in time")
        time.sleep(poll)


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the process we started and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    if proc.stderr:
        proc.stderr.close()


def children(pid: int) -> list[int]:
    """Child process ids of `pid` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def stop(proc: subprocess.Popen, timeout: float = 10) -> bool:
    """SIGSTOP `proc` and wait until it is really stopped (state T); False when it ended first."""
    os.kill(proc.pid, signal.SIGSTOP)
    return stopped(proc, timeout)


def stopped(proc: subprocess.Popen, timeout: float = 90) -> bool:
    """Wait until `proc` is stopped (state T: SIGSTOP, or a pause point of reidkit.pause); False when it ended
    first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state in ("T", "t"):
            return True
        time.sleep(0.001)
    raise AssertionError(f"process {proc.pid} did not stop")


def pause_at(event: str, n: int = 1) -> dict:
    """Environment for a child that stops itself (SIGSTOP) at the n-th `event` (reidkit.pause, e.g. part-written):
    the test then kills or inspects it at exactly that point, on any CPU."""
    from reidkit.pause import ENV

    return {ENV: f"{event}:{n}"}


def popen_paused(*args: str, event: str, n: int = 1, **kw) -> subprocess.Popen:
    """`popen(ARGS)` that stops itself at the n-th `event`; returns once it is stopped there (fails when the
    command ends first)."""
    proc = popen(*args, env={**kw.pop("env", {}), **pause_at(event, n)}, **kw)
    if not stopped(proc):
        raise AssertionError(f"process ended (rc {proc.returncode}) before the {n}th {event}: "
                             f"{(proc.stderr.read() if proc.stderr else '')[-2000:]}")
    return proc


def resume(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGCONT)


# A small Python process runs the command as its child and reports the children's peak RSS: measured in the
# caller itself, ru_maxrss would include the caller's size (Linux keeps the peak across fork + exec).
_MAXRSS = ("import resource, subprocess, sys\n"
           "rc = subprocess.run([sys.executable, 'cli.py', *sys.argv[1:]]).returncode\n"
           "print(f'MAXRSS_KB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr)\n"
           "sys.exit(rc)\n")


def cli_maxrss(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """`python cli.py ARGS` plus the peak resident memory in MB of the command (or of one of its workers)."""
    proc = subprocess.run([sys.executable, "-c", _MAXRSS, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=child_env(None))
    kb = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KB ")]
    assert kb, proc.stderr[-2000:]
    return proc, kb[-1] / 1024


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def limit_file_size(max_bytes: int) -> Callable[[], None]:
    """preexec_fn for a child process: files may not grow beyond `max_bytes` (RLIMIT_FSIZE; works as root, unlike
    chmod). SIGXFSZ is ignored so that the write fails with EFBIG ('File too large') instead of killing."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


def chmod_stops_root(tmp: Path) -> bool:
    """Whether a read-only folder stops this process from writing (False when running as root)."""
    probe = tmp / "ro-probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "x").write_bytes(b"x")
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
        shutil.rmtree(probe)
    return False


def private_mounts(tmp: Path) -> bool:
    """Whether this process may mount a tmpfs in a private mount namespace (root with CAP_SYS_ADMIN)."""
    if not shutil.which("unshare"):
        return False
    probe = tmp / "probe"
    probe.mkdir()
    r = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                       capture_output=True)
    return r.returncode == 0


# ------------------------------------------------------------------------------------------------ results


def cache_rows(cache: Path) -> dict[str, dict]:
    """image_id -> full row (all columns) of every split of a cache."""
    from posecrop.cache_reader import read_split

    out: dict[str, dict] = {}
    for split in ("train", "query", "gallery"):
        if (cache / split).is_dir() and list((cache / split).glob("part-*.parquet")):
            for r in read_split(cache, split).to_pylist():
                assert r["image_id"] not in out, f"duplicate row {r['image_id']}"
                out[r["image_id"]] = r
    return out


def part_ids(cache: Path) -> list[str]:
    """image_id of every row of every finished part file (duplicates kept, each file read on its own)."""
    import pyarrow.parquet as pq

    from posecrop.cache_reader import all_part_files

    ids: list[str] = []
    for part in all_part_files(cache):
        ids += pq.read_table(part, columns=["image_id"]).column(0).to_pylist()
    return ids


def leftovers(folder: Path) -> list[Path]:
    """Temporary / partial files under `folder`: atomic-write temporaries and anything not a known cache file."""
    from posecrop.cache_reader import PART_RE, REPORT_NAME

    bad = []
    for p in folder.rglob("*"):
        if p.is_dir():
            continue
        if p.name.endswith(".tmp") or not (PART_RE.match(p.name) or p.name == REPORT_NAME
                                           or p.name.startswith(".lock-")):
            bad.append(p)
    return bad


def report_by_image(cache: Path, statuses: Iterable[str] = ("failed", "skipped"), run: str | None = None
                    ) -> dict[str, dict]:
    """Last report entry per image_id with one of `statuses` (of one run when given)."""
    from posecrop.cache_reader import read_report

    out = {}
    for e in read_report(cache):
        if e.get("status") in statuses and (run is None or e.get("run") == run):
            out[e["image_id"]] = e
    return out


def summaries(cache: Path) -> list[dict]:
    from posecrop.cache_reader import read_report

    return [e for e in read_report(cache) if e.get("status") == "summary"]

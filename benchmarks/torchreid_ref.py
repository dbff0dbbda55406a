"""torchreid's own evaluation and re-ranking code as benchmark references, loaded from the registry's sdist.

The registry's `torchreid` 0.2.5 sdist (an unofficial repack of KaiyangZhou/deep-person-reid) carries
`torchreid/reid/metrics/rank.py` (`eval_market1501`, `eval_cuhk03`) and `torchreid/reid/utils/rerank.py`
(`re_ranking`, the k-reciprocal code every ReID toolkit copies). Importing the torchreid package pulls in
torchvision, which does not import on this CPU torch, so the two files are loaded on their own with
`importlib.util.spec_from_file_location` from a temporary unpacked copy. Nothing of torchreid is vendored into the
project or needed at run time; only the benchmarks use it.

rank.py first tries `from torchreid.reid.metrics.rank_cylib.rank_cy import evaluate_cy` (a Cython ranker that
is not in the sdist) and falls back to its Python code with a warning. Loaded from its file, that import always
fails (no torchreid package), `IS_CYTHON_AVAI` is False, and the benchmarks call the Python functions
`eval_market1501` / `eval_cuhk03` directly: the reference is torchreid's Python evaluator, not its Cython one.

Where the sdist comes from, first found wins:
  1. `$TORCHREID_SDIST` (a .tar.gz or an unpacked source folder) or the `path` argument;
  2. a cached download in `$TORCHREID_CACHE` (default ~/.cache/posecrop-reid/torchreid);
  3. `pip download --no-deps --no-binary :all: torchreid==0.2.5` into that cache (registry access needed).
If none works, `load_reference()` returns None and `reason()` says why; the benchmark rows are then skipped
with that message.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

VERSION = "0.2.5"
RANK_FILE = "torchreid/reid/metrics/rank.py"
RERANK_FILE = "torchreid/reid/utils/rerank.py"
_DEFAULT_CACHE = Path.home() / ".cache" / "posecrop-reid" / "torchreid"
_why: list[str] = []


@dataclass
class Reference:
    rank: ModuleType          # eval_market1501, eval_cuhk03 (Python code; IS_CYTHON_AVAI is False)
    rerank: ModuleType        # re_ranking
    source: str               # where the sdist came from
    cython: bool              # rank.IS_CYTHON_AVAI (always False here)

    def describe(self) -> str:
        ranker = "Cython" if self.cython else "Python fallback (Cython ranker not in the sdist)"
        return f"torchreid {VERSION} sdist ({self.source}), rank.py {ranker}"


def reason() -> str:
    """Why the reference could not be loaded (empty when it was)."""
    return "; ".join(_why)


def _cache_dir() -> Path:
    return Path(os.environ.get("TORCHREID_CACHE", _DEFAULT_CACHE))


def _find_sdist(path: str | os.PathLike | None, download: bool = True) -> Path | None:
    given = path or os.environ.get("TORCHREID_SDIST")
    if given:
        p = Path(given)
        if p.exists():
            return p
        _why.append(f"TORCHREID_SDIST={p} does not exist")
    cache = _cache_dir()
    cached = sorted(cache.glob(f"torchreid-{VERSION}.tar.gz"))
    if cached:
        return cached[0]
    if not download:
        _why.append(f"no torchreid-{VERSION}.tar.gz in {cache} (downloading not allowed here)")
        return None
    try:
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               f"torchreid=={VERSION}", "-d", str(cache), "-q"],
                              capture_output=True, text=True, timeout=180, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        _why.append(f"pip download torchreid=={VERSION} failed: {e}")
        return None
    cached = sorted(cache.glob(f"torchreid-{VERSION}.tar.gz"))
    if not cached:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no sdist saved"]
        _why.append(f"pip download torchreid=={VERSION} into {cache} failed: {tail[0]}")
        return None
    return cached[0]


def _extract(sdist: Path, into: Path) -> Path:
    """The folder that contains `torchreid/reid/...` (an unpacked folder is used in place)."""
    if sdist.is_dir():
        for root in (sdist, *sdist.iterdir()):
            if (root / RANK_FILE).exists():
                return root
        raise FileNotFoundError(f"{sdist}: no {RANK_FILE} inside")
    wanted = (RANK_FILE, RERANK_FILE)
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(wanted)]
        if len(members) < 2:
            raise FileNotFoundError(f"{sdist}: expected {wanted} inside the archive")
        tar.extractall(into, members=members, filter="data")
    top = members[0].name.split("/")[0]
    return into / top


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # rank.py's "Cython evaluation is unavailable" warning
        spec.loader.exec_module(module)
    return module


def load_reference(path: str | os.PathLike | None = None, download: bool = True) -> Reference | None:
    """torchreid's rank.py and rerank.py loaded from their files, or None (see `reason()`); download=False never
    calls pip (tests)."""
    _why.clear()
    sdist = _find_sdist(path, download)
    if sdist is None:
        return None
    try:
        tmp = Path(tempfile.mkdtemp(prefix="torchreid-ref-"))
        root = _extract(sdist, tmp)
        rank = _load(root / RANK_FILE, "_torchreid_ref_rank")
        rerank = _load(root / RERANK_FILE, "_torchreid_ref_rerank")
    except (OSError, tarfile.TarError, SyntaxError, ImportError) as e:
        _why.append(f"cannot load torchreid's files from {sdist}: {e}")
        return None
    return Reference(rank, rerank, str(sdist), bool(getattr(rank, "IS_CYTHON_AVAI", False)))


if __name__ == "__main__":
    ref = load_reference(sys.argv[1] if len(sys.argv) > 1 else None)
    print(ref.describe() if ref else f"torchreid reference unavailable: {reason()}")

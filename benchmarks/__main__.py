"""`python -m benchmarks [--quick] [--stage crop --stage eval ...] [--out DIR]`"""
from __future__ import annotations

import argparse
from pathlib import Path

from .suite import STAGES, run_suite


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="CI-sized inputs (each stage well under a minute or two)")
    p.add_argument("--stage", action="append", choices=STAGES, help="run only these stages (repeatable)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for results.json/.md")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per stage")
    p.add_argument("--merge", action="store_true", help="keep the rows of the stages not run in OUT/results.json")
    a = p.parse_args()
    rows, meta = run_suite(tuple(a.stage or STAGES), quick=a.quick, out=a.out, timeout=a.timeout, merge=a.merge)
    raise SystemExit(1 if meta["errors"] else 0)


if __name__ == "__main__":
    main()

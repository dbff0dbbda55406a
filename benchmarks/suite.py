"""The benchmark suite: runs every stage module in its own process, collects our figure, the reference's
figure measured in the same run, their ratio and the stage's peak memory, and writes JSON + markdown tables.

Each stage module `benchmarks/bench_<stage>.py` exposes `run(quick: bool = True) -> list[dict]`.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

STAGES: tuple[str, ...] = ("crop", "pose", "blazepose", "repair", "loader", "imagenet_loader", "model", "eval",
                          "rerank", "flip")
# Not a speed ratio and about an hour on 2 cores, so not one of STAGES: `python -m benchmarks.bench_accuracy`
# or `cli.py bench --accuracy` (CUHK01 R1 / R5 / mAP of baseline, aligned and intra-inter over 3 seeds).
COLUMNS = ("stage", "ours", "ours_value", "reference", "reference_value", "unit", "ratio", "target", "peak_mem_mb")


def run_stage_inprocess(stage: str, quick: bool) -> list[dict]:
    module = importlib.import_module(f"benchmarks.bench_{stage}")
    return module.run(quick=quick)


def run_stage_subprocess(stage: str, quick: bool, timeout: float | None = None) -> tuple[list[dict], float, str]:
    """Run one stage in a child process; returns (rows, child peak RSS in MB, error text or '')."""
    cmd = [sys.executable, "-m", "benchmarks.suite", "--stage", stage] + (["--quick"] if quick else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return [], 0.0, f"timed out after {timeout} s"
    if proc.returncode != 0:
        return [], 0.0, (err or out)[-2000:]
    marker = "BENCH-JSON:"
    payloads = [json.loads(line[len(marker):]) for line in out.splitlines() if line.startswith(marker)]
    if not payloads:
        return [], 0.0, "the stage printed no results"
    return payloads[-1]["rows"], payloads[-1]["peak_mb"], ""


def format_markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Benchmark results ({meta['mode']})", "",
             f"Machine: {meta['machine']}; Python {meta['python']}; torch {meta['torch']}; {meta['date']}", "",
             "| stage | ours | value | reference | value | unit | ratio | target | peak MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def num(v):
            return f"{v:.4g}" if isinstance(v, (int, float)) else str(v if v is not None else "")
        lines.append("| " + " | ".join(num(r.get(k)) for k in COLUMNS) + " |")
    notes = [f"- **{r['stage']}**: {r['notes']}" for r in rows if r.get("notes")]
    if notes:
        lines += ["", "Notes:", *notes]
    errors = meta.get("errors") or {}
    if errors:
        lines += ["", "Stages that failed:", *[f"- {k}: {v.splitlines()[-1] if v else ''}" for k, v in errors.items()]]
    return "\n".join(lines) + "\n"


def merge_rows(previous: Path, rows: list[dict], stages: tuple[str, ...]) -> list[dict]:
    """The rows of `previous` (a results.json) whose stage was not run now, then this run's rows."""
    try:
        old = json.loads(previous.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return rows
    ran = set(stages) | {r["stage"] for r in rows}
    return [r for r in old if r.get("stage") not in ran and r.get("suite_stage", r.get("stage")) not in ran] + rows


def run_suite(stages: tuple[str, ...] = STAGES, quick: bool = True, out: Path | None = None,
              timeout: float | None = None, merge: bool = False) -> tuple[list[dict], dict]:
    import torch
    from rich.console import Console
    from rich.table import Table

    console = Console()
    rows: list[dict] = []
    errors: dict[str, str] = {}
    for stage in stages:
        console.print(f"[bold]benchmark[/] {stage} ({'quick' if quick else 'full'}) ...")
        t0 = time.perf_counter()
        stage_rows, peak_mb, err = run_stage_subprocess(stage, quick, timeout)
        if err:
            errors[stage] = err
            console.print(f"[red]{stage} failed[/]: {err.strip().splitlines()[-1] if err.strip() else err}")
        for r in stage_rows:
            r["suite_stage"] = stage
            if r.get("peak_mem_mb") is None:
                r["peak_mem_mb"] = round(peak_mb, 1)
            r["seconds"] = round(time.perf_counter() - t0, 1)
        rows.extend(stage_rows)
    meta = {"mode": "quick" if quick else "full", "machine": f"{platform.machine()} {os.cpu_count()} cpu",
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M"), "errors": errors}
    table = Table(title="benchmarks: ours vs reference (same run)")
    for c in COLUMNS:
        table.add_column(c)
    for r in rows:
        table.add_row(*[f"{r.get(c):.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in COLUMNS])
    console.print(table)
    if out is not None:
        from reidkit.atomic import atomic_write_text
        if merge:   # keep the rows of the stages not run now
            rows = merge_rows(out / "results.json", rows, stages)
            meta["merged"] = f"rows of stages other than {', '.join(stages)} kept from the previous results.json"
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "results.json", json.dumps({"meta": meta, "rows": rows}, indent=2))
        atomic_write_text(out / "results.md", format_markdown(rows, meta))
        console.print(f"written: {out / 'results.json'}, {out / 'results.md'}")
        refresh_readme(out, console)
    return rows, meta


def refresh_readme(out: Path, console) -> None:
    """Regenerate README.md's performance tables when `out` is (inside) benchmarks/results, the folder they are
    made from; a problem with them is printed, not raised: the results just written stay."""
    from . import readme_tables

    results = readme_tables.RESULTS.resolve()
    if not (out.resolve() == results or results in out.resolve().parents):
        return
    try:
        changed = readme_tables.update_readme()
    except readme_tables.ReidError as e:
        console.print(f"[red]README tables not regenerated[/]: {e}")
        return
    console.print(f"README.md: performance tables {'rewritten' if changed else 'already up to date'}")


def _child_main(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    rows = run_stage_inprocess(a.stage, a.quick)
    import resource

    # The stage's own peak: the largest of this process's high-water mark (VmHWM; ru_maxrss of a fresh child can
    # report the parent's) and its worker children's ru_maxrss, in KiB.
    hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    peak_kb = max(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print("BENCH-JSON:" + json.dumps({"rows": rows, "peak_mb": round(peak_kb / 1024, 1)}), flush=True)


if __name__ == "__main__":
    _child_main(sys.argv[1:])

"""`python cli.py bench`: the benchmark suite."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("bench", help="Measure every stage against a reference in the same run (ratios, peak memory).")
    def bench(
        quick: bool = typer.Option(False, "--quick", help="CI-sized inputs for a 2-core machine."),
        stage: Optional[List[str]] = typer.Option(None, "--stage", help="Only these stages: crop, pose, blazepose, repair, loader, model, eval."),
        out: Path = typer.Option(Path("benchmarks/results"), "--out", help="Folder for results.json and results.md."),
        timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds allowed per stage."),
    ) -> None:
        from .suite import STAGES, run_suite

        stages = tuple(stage) if stage else STAGES
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise typer.BadParameter(f"unknown stage(s) {unknown}; known: {list(STAGES)}", param_hint="--stage")
        _, meta = run_suite(stages, quick=quick, out=out, timeout=timeout)
        if meta["errors"]:
            raise typer.Exit(1)

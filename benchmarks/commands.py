"""`python cli.py bench`: the benchmark suite."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("bench", help="Measure every stage against a reference in the same run (ratios, peak memory).")
    def bench(
        quick: bool = typer.Option(False, "--quick", help="CI-sized inputs for a 2-core machine."),
        stage: Optional[List[str]] = typer.Option(None, "--stage", help="Only these stages: crop, pose, blazepose, "
                                                  "repair, loader, imagenet_loader, model, eval."),
        out: Path = typer.Option(Path("benchmarks/results"), "--out", help="Folder for results.json and results.md."),
        timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds allowed per stage."),
        accuracy: bool = typer.Option(False, "--accuracy", help="Instead: the real-data accuracy benchmark "
                                      "(CUHK01, BlazePose, baseline / aligned / intra-inter x 3 seeds; "
                                      "benchmarks/bench_accuracy.py)."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="--accuracy: training epochs (default 14)."),
        seeds: Optional[List[int]] = typer.Option(None, "--seed",
                                                  help="--accuracy: seeds (repeatable; default 0 1 2)."),
        jobs: Optional[int] = typer.Option(None, "--jobs", help="--accuracy: runs at a time (default 2)."),
        misalign: Optional[float] = typer.Option(None, "--misalign", help="--accuracy: train and test on a copy of "
                                                 "CUHK01 re-cut with Market-like box jitter of this strength (1: "
                                                 "Market-1501's spread of the part positions)."),
    ) -> None:
        if accuracy:
            from .bench_accuracy import main as accuracy_main

            argv = ["--results", str(out)]
            argv += ["--epochs", str(epochs)] if epochs else []
            argv += ["--seeds", *map(str, seeds)] if seeds else []
            argv += ["--jobs", str(jobs)] if jobs else []
            argv += ["--misalign", str(misalign)] if misalign else []
            raise typer.Exit(accuracy_main(argv))
        from .suite import STAGES, run_suite

        stages = tuple(stage) if stage else STAGES
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise typer.BadParameter(f"unknown stage(s) {unknown}; known: {list(STAGES)}", param_hint="--stage")
        _, meta = run_suite(stages, quick=quick, out=out, timeout=timeout)
        if meta["errors"]:
            raise typer.Exit(1)

"""`python cli.py canonical fit | eval`: learn a canonical pose bank, measure how well it repairs joints."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import typer

DEFAULT_K = 8                      # mirrors posecrop.canonical.DEFAULT_K (kept import-light for --help)
DEFAULT_COMPONENTS = 24            # mirrors posecrop.shape_model.DEFAULT_COMPONENTS
DEFAULT_NOISE = 1e-4               # mirrors posecrop.shape_model.DEFAULT_NOISE
DEFAULT_FRAME = (64.0, 128.0)      # pose-gan CSV frame: a Market-1501 crop (width, height)
EXIT_BAD_INPUT = 1


def _fail(message: str) -> None:
    from rich.console import Console
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=False)


def _load_poses(posegan_csv: List[Path], openpose_dir: List[Path], cache: List[Path], frame: Tuple[float, float]):
    """Concatenate every pose input: (keypoints, scores, image sizes or None, description)."""
    import numpy as np

    from .repair_eval import read_cache_poses, read_openpose_folder, read_posegan_csv

    kps, scores, sizes, described = [], [], [], []
    for p in posegan_csv:
        _, k, s = read_posegan_csv(p)
        kps.append(k), scores.append(s), sizes.append(np.broadcast_to(np.asarray(frame, float), (len(k), 2)))
        described.append({"posegan_csv": p.name, "poses": len(k)})
    for d in openpose_dir:
        _, k, s = read_openpose_folder(d)
        kps.append(k), scores.append(s), sizes.append(np.full((len(k), 2), np.nan))
        described.append({"openpose_dir": d.name, "poses": len(k)})
    # Hook for further pose inputs: a reader returning (names, keypoints, scores[, sizes]) slots in here.
    for c in cache:
        _, k, s, wh = read_cache_poses(c)
        kps.append(k), scores.append(s), sizes.append(wh)
        described.append({"cache": c.name, "poses": len(k)})
    if not kps:
        _fail("give at least one pose input: --posegan-csv, --openpose-dir or --cache")
    size = np.concatenate(sizes)
    return np.concatenate(kps), np.concatenate(scores), (None if np.isnan(size).any() else size), described


def register(app: typer.Typer) -> None:
    canonical = typer.Typer(name="canonical", no_args_is_help=True,
                            help="Canonical pose bank used to repair missing / low-confidence joints: learn one from "
                                 "confident poses (fit), measure repair quality on held-out real poses (eval).")

    @canonical.command("fit", help="Learn a canonical pose bank (k-means of confident, nearly complete poses under "
                                   "scale + translation alignment, plus left/right mirror images) and write it as "
                                   "JSON. "
                                   "The default bank shipped with the package is `fit --posegan-csv "
                                   "<market-annotation-train.csv> --k 8 --seed 0`.")
    def fit(
        posegan_csv: List[Path] = typer.Option([], "--posegan-csv", help="pose-gan keypoint CSV (name:keypoints_y:"
                                               "keypoints_x); repeatable.", show_default=False),
        openpose_dir: List[Path] = typer.Option([], "--openpose-dir", help="folder searched recursively for OpenPose "
                                                "*_keypoints.json (COCO-18 / BODY_25, every person); repeatable. "
                                                "No image sizes: the frame prior keeps its default.",
                                                show_default=False),
        cache: List[Path] = typer.Option([], "--cache", help="posecrop crop cache folder: its detected joints "
                                         "(joint_source 0) and image sizes; repeatable.", show_default=False),
        out: Path = typer.Option(..., "--out", "-o", help="bank JSON to write (atomically)."),
        k: int = typer.Option(DEFAULT_K, "--k", min=1, help="number of clusters; with mirror images the bank holds "
                              "up to 2k poses."),
        threshold: float = typer.Option(0.1, "--threshold", help="joints scoring below are not used."),
        min_joints: int = typer.Option(14, "--min-joints", min=1, max=18, help="learn only from poses with at least "
                                       "this many confident joints (torso included)."),
        mirror: bool = typer.Option(True, "--mirror/--no-mirror", help="add the left/right mirror image of each "
                                    "canonical pose (unless it duplicates one)."),
        seed: int = typer.Option(0, "--seed", help="k-means++ seed."),
        restarts: int = typer.Option(3, "--restarts", min=1, help="k-means restarts (the best is kept)."),
        frame: Tuple[float, float] = typer.Option(DEFAULT_FRAME, "--frame", help="WIDTH HEIGHT of the frame the "
                                                  "pose-gan CSV coordinates refer to (Market-1501 crops: 64 128)."),
        components: int = typer.Option(DEFAULT_COMPONENTS, "--components", min=0, max=33, help="principal "
                                       "directions of the shape model (learned from the complete poses)."),
        noise: float = typer.Option(DEFAULT_NOISE, "--noise", min=1e-9, help="noise variance of the shape model "
                                    "(per coordinate, body heights^2)."),
        shape_model: bool = typer.Option(True, "--shape-model/--no-shape-model", help="learn the shape model "
                                         "(format 2; without it the bank is a format-1 bank repaired by its poses)."),
    ) -> None:
        from rich.console import Console
        from rich.table import Table

        from .canonical_fit import fit_bank
        from .sources.base import PoseReadError

        console = Console()
        try:
            kps, scores, sizes, described = _load_poses(posegan_csv, openpose_dir, cache, frame)
        except (PoseReadError, ValueError, FileNotFoundError) as e:
            _fail(str(e))
        command = " ".join(["python cli.py canonical fit"] + [f"--posegan-csv {p}" for p in posegan_csv]
                           + [f"--openpose-dir {p}" for p in openpose_dir] + [f"--cache {p}" for p in cache]
                           + [f"--k {k} --threshold {threshold} --min-joints {min_joints} --seed {seed} "
                              f"--restarts {restarts}", "--mirror" if mirror else "--no-mirror",
                              f"--components {components} --noise {noise:g}" if shape_model else "--no-shape-model",
                              f"--frame {frame[0]:g} {frame[1]:g} --out {out}"])
        with _progress() as bar:
            task = bar.add_task(f"k-means on {len(kps)} poses", total=restarts)
            try:
                bank = fit_bank(kps, scores, k=k, threshold=threshold, seed=seed, min_joints=min_joints, mirror=mirror,
                                image_size=sizes, restarts=restarts, meta={"inputs": described, "command": command},
                                progress=lambda _: bar.advance(task), components=components if shape_model else None,
                                noise=noise)
            except ValueError as e:
                _fail(str(e))
        bank.save(out)
        table = Table(title=f"canonical bank {out} ({len(bank)} poses; origin: cluster size or mirrored pose; "
                            "shoulders / ankles: left minus right x, in body heights)")
        for col in ("#", "name", "origin", "shoulders", "ankles"):
            table.add_column(col, overflow="fold")
        for i, (name, pose, origin) in enumerate(zip(bank.names, bank.poses, bank.meta["origin"])):
            table.add_row(str(i), name, origin.replace("cluster of ", "").replace("mirror of pose", "mirror of"),
                          f"{pose[5, 0] - pose[2, 0]:+.2f}", f"{pose[13, 0] - pose[10, 0]:+.2f}")
        console.print(table)
        console.print(f"learned from {bank.meta['num_training_poses']} of {bank.meta['num_input_poses']} poses; "
                      f"frame prior: height {bank.frame.height_fraction:.3f} of the frame, centroid at "
                      f"{tuple(round(c, 3) for c in bank.frame.center)}; sha256 {bank.sha256}")
        if bank.shape_model is not None:
            m = bank.shape_model
            console.print(f"shape model: {m.num_components} components from {m.meta.get('learned_from')} "
                          f"(+ mirror images), {m.meta.get('explained_variance', float('nan')):.1%} of the aligned "
                          f"variance, noise {m.noise:g}; fallback frame prior: height {m.height_fraction:.3f} "
                          f"+- {m.scale_spread:.1%}, centroid {m.center}, spread {m.centre_spread} body heights")

    @canonical.command("eval", help="Measure repair quality: hide joints of complete real poses the way real poses "
                                    "lose them (missing patterns of the incomplete ones, overall and per number of "
                                    "hidden joints; plus 15-18 hidden random joints for the frame fallback), repair, "
                                    "compare with the truth. Methods: the shape model (default repair), the canonical "
                                    "bank, (a) the mean pose placed by least squares (scale + shift; (a') with "
                                    "rotation), (b) k-NN regression over the training poses, the mean pose placed "
                                    "by the frame. Use poses the bank was NOT learned from (the shipped bank comes "
                                    "from the Market train CSV: evaluate on the test CSV).")
    def evaluate(
        posegan_csv: List[Path] = typer.Option(..., "--posegan-csv", help="held-out pose-gan CSV(s) to evaluate on "
                                               "(e.g. market-annotation-test.csv); repeatable.", show_default=False),
        bank_path: Optional[Path] = typer.Option(None, "--bank", help="bank JSON (default: the one shipped with "
                                                 "the package).", show_default=False),
        fit_csv: List[Path] = typer.Option([], "--fit-csv", help="instead of --bank, learn a bank from these "
                                           "pose-gan CSVs first (with --k, --seed).", show_default=False),
        train_csv: List[Path] = typer.Option([], "--train-csv", help="training poses for the k-NN baseline "
                                             "(default: --fit-csv, else market-annotation-train.csv next to the "
                                             "first --posegan-csv if there is one).", show_default=False),
        knn: int = typer.Option(5, "--knn", min=1, help="neighbours of the k-NN baseline."),
        k: int = typer.Option(DEFAULT_K, "--k", min=1, help="clusters when learning with --fit-csv."),
        seed: int = typer.Option(0, "--seed", help="seed of the hidden-joint sampling (and of --fit-csv k-means)."),
        repeats: int = typer.Option(3, "--repeats", min=1, help="hidden-joint draws per complete pose and setting."),
        max_poses: Optional[int] = typer.Option(None, "--max-poses", min=1, help="evaluate on a random subset of "
                                                "this many complete poses (default: all).", show_default=False),
        min_reliable: int = typer.Option(4, "--min-reliable", min=1, help="fewer reliable joints -> frame fallback."),
        frame: Tuple[float, float] = typer.Option(DEFAULT_FRAME, "--frame", help="WIDTH HEIGHT of the CSV frame."),
        out: Path = typer.Option(Path("canonical_eval.json"), "--out", "-o", help="JSON report to write."),
        plot: Optional[Path] = typer.Option(None, "--plot", help="PNG plot of error vs hidden joints (default: the "
                                            "report path with .png).", show_default=False),
    ) -> None:
        import json

        from rich.console import Console
        from rich.table import Table

        from reidkit.atomic import atomic_write_text

        from .canonical_fit import fit_bank
        from .canonical import BankFormatError, load_bank
        from .repair_eval import (FALLBACK_COUNTS, LS_MEAN, NEW, evaluation_report, plot_report, read_posegan_csvs,
                                  split_complete, training_poses)
        from .sources.base import PoseReadError

        console = Console()
        console = Console(width=max(console.width, 112))   # the table needs the room, also in logs
        try:
            if fit_csv:
                _, fk, fs = read_posegan_csvs(fit_csv)
                with console.status(f"learning a bank (k={k}) from {len(fk)} poses"):
                    bank = fit_bank(fk, fs, k=k, seed=seed, image_size=frame,
                                    meta={"inputs": [p.name for p in fit_csv]})
            else:
                bank = load_bank(bank_path)
            _, kps, scores = read_posegan_csvs(posegan_csv)
            if not train_csv:
                guess = posegan_csv[0].parent / "market-annotation-train.csv"
                train_csv = list(fit_csv) or ([guess] if guess.is_file() and guess not in posegan_csv else [])
            train = training_poses(*read_posegan_csvs(train_csv)[1:]) if train_csv else None
        except (PoseReadError, BankFormatError, ValueError) as e:
            _fail(str(e))
        if train is None:
            console.print("[yellow]no --train-csv: the k-NN baseline is left out[/]")
        _, patterns = split_complete(kps, scores)
        n_settings = 2 + len(set(patterns.sum(1).tolist())) + len(FALLBACK_COUNTS)
        with _progress() as bar:
            task = bar.add_task("hide, repair, compare", total=n_settings)
            try:
                report = evaluation_report(bank, kps, scores, image_size=frame, repeats=repeats, seed=seed,
                                           max_poses=max_poses, min_reliable=min_reliable, train=train, knn=knn,
                                           progress=lambda name: bar.update(task, advance=1, description=name))
            except ValueError as e:
                _fail(str(e))
        report["data"]["files"] = [str(p) for p in posegan_csv]
        report["data"]["train_files"] = [str(p) for p in train_csv]
        report["bank"]["path"] = str(bank_path) if bank_path else ("learned from " + ", ".join(map(str, fit_csv))
                                                                    if fit_csv else "shipped default")
        atomic_write_text(out, json.dumps(report, indent=1) + "\n")
        png = plot_report(report, plot if plot is not None else out.with_suffix(".png"))

        rows = report["rows"]
        methods = list(dict.fromkeys(r["method"] for r in rows))
        by = {(r["setting"], r["method"]): r for r in rows}
        table = Table(title=f"Mean error of the hidden joints: px and in body heights H, on "
                            f"{report['data']['complete_used']} complete held-out poses x {repeats} draws (bank "
                            f"{bank.sha256[:12]}; best per row in bold)", title_justify="left")
        table.add_column("hidden")
        for i, m in enumerate(methods):
            table.add_column(f"{chr(65 + i)}", justify="right")
        for setting in dict.fromkeys(r["setting"] for r in rows):
            cells = [by[(setting, m)] for m in methods]
            best = min(c["mean_px"] for c in cells)
            first = cells[0]
            label = ("all real" if first["count"] is None else str(first["count"])) + \
                ("" if first["patterns"] == "real" else " *")
            if first["count"] is not None and first["count"] == min(FALLBACK_COUNTS):
                table.add_section()
            table.add_row(label if first["count"] is not None else f"{label} ({first['hidden']:.1f})",
                          *[(f"[bold]{c['mean_px']:.2f}[/]" if c["mean_px"] == best else f"{c['mean_px']:.2f}")
                            + f" {c['mean_rel_h']:.3f}".replace(" 0.", " .") for c in cells],
                          end_section=first["count"] is None)
        inc = report["incomplete_rows"]
        last_kind = None
        for setting in dict.fromkeys(r["setting"] for r in inc):
            cells = [next(r for r in inc if r["setting"] == setting and r["method"] == m) for m in methods]
            best = min(c["mean_px"] for c in cells)
            kind = setting.split(",")[0]
            if kind != last_kind:
                table.add_section()
            last_kind = kind
            table.add_row(setting.replace("incomplete, ", "incompl. ").replace(" hidden: ", ": ")
                          .replace(" (fallback): all", " *")
                          + f" ({cells[0]['poses']})",
                          *[(f"[bold]{c['mean_px']:.2f}[/]" if c["mean_px"] == best else f"{c['mean_px']:.2f}")
                            + f" {c['mean_rel_h']:.3f}".replace(" 0.", " .") for c in cells])
        console.print(table)
        console.print("methods: " + "; ".join(f"{chr(65 + i)} = {m}" for i, m in enumerate(methods)))
        console.print("* no real pose misses that many joints: uniformly random joints were hidden (fewer than "
                      f"--min-reliable {min_reliable} reliable joints: the frame fallback). incompl.: real "
                      "incomplete poses (>= 8 joints) with 3 more of their joints hidden, scored on those (H: extent "
                      "of the present joints); back / front by the shoulders (no complete pose is a back view). "
                      "real poses, k kept: all real poses with >= 8 joints keep k random ones (the fallback on the "
                      "real mix of views).")
        gains = report["summary"]
        emp = gains.get("all real patterns")
        if emp:
            console.print(f"all real patterns: {NEW} / {LS_MEAN} error = {emp['error_ratio']:.2f}, PCK@0.1H "
                          f"{emp['pck_gain']:+.3f}. Report: {out}, plot: {png}")

    app.add_typer(canonical, name="canonical")

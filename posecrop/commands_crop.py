"""`python cli.py crop | info | show`: fill a Parquet crop cache, describe it, draw a contact sheet of it."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

# CropConfig defaults, repeated here so that `--help` stays import-light (checked by tests/test_crop_stage.py)
HELP_DEFAULTS = {"dataset": "market", "beta": 0.1, "region_width": "paper", "threshold": 0.1, "min_reliable": 4,
                 "body_size": "384x192",
                 "part_size": "96x192", "encoding": "jpeg", "jpeg_quality": 95, "fill": "mean", "shard": "0/1",
                 "batch_size": 32, "rows_per_part": 1000}
EXIT_BAD_INPUT, EXIT_LOCKED, EXIT_INTERRUPTED = 1, 3, 130
MAX_LISTED = 10  # failed / skipped images printed after a run (all of them are in the report)


def _d(name: str) -> str:
    return f" (default: {HELP_DEFAULTS[name]})"


def parse_size(text: str, option: str) -> tuple[int, int]:
    """'384x192' -> (384, 192) as (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected HEIGHTxWIDTH such as 384x192, got {text!r}", param_hint=option) from None
    return h, w


def parse_options(items: List[str] | None, option: str) -> dict:
    """['key=value', ...] -> dict; values are JSON when they parse as JSON (numbers, true, lists), else strings."""
    import json
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    from rich.console import Console
    from rich.markup import escape
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def _list_problems(cache: Path, run_id: str, limit: int = MAX_LISTED) -> None:
    """Print the first `limit` failed / skipped images of run `run_id` (file and reason) to stderr."""
    from rich.console import Console
    from rich.markup import escape

    from .cache_reader import read_report

    problems = [e for e in read_report(cache) if e.get("run") == run_id and e.get("status") in ("failed", "skipped")]
    console = Console(stderr=True)
    for e in problems[:limit]:
        image_id, reason = str(e.get("image_id")), str(e.get("reason"))
        line = reason if image_id in reason else f"{image_id}: {reason}"
        console.print(f"[yellow]{escape(str(e['status']))}:[/] {escape(line)}", highlight=False, markup=True,
                      soft_wrap=True)
    if len(problems) > limit:
        console.print(f"... and {len(problems) - limit} more in {cache / 'crop_report.jsonl'}", highlight=False,
                      markup=False, soft_wrap=True)


def _issue_line(title: str, counts: dict) -> str:
    """'train: implausible poses 12 (3 repaired, 9 fallback): upside_down 8, outside_image 4'."""
    rules = ", ".join(f"{k} {v}" for k, v in counts.get("by_rule", {}).items())
    return (f"{title} {counts['implausible']} ({counts.get('repaired', 0)} repaired, {counts.get('fallback', 0)} "
            f"frame fallback): {rules}")


def register(app: typer.Typer) -> None:
    from .datasets import dataset_names        # the --dataset and --pose-source choices: what is registered
    from .sources import pose_source_kinds

    @app.command("crop", help="Pose -> canonical repair -> Eq. 1-2 regions -> five crops per image, into a Parquet "
                              "cache (CACHE/<split>/part-*.parquet). Resumable, shardable; bad images are listed in "
                              "CACHE/crop_report.jsonl and the run goes on.")
    def crop(
        dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset reader: " + ", ".join(dataset_names())
                                              + "." + _d("dataset")),
        root: Optional[Path] = typer.Option(None, "--root", help="Dataset root folder (required unless in --config)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Cache folder to create or resume (required unless in "
                                           "--config)."),
        config: Optional[Path] = typer.Option(None, "--config", help="Recipe TOML: a 'crop' table (or top-level keys) "
                                              "with CropConfig fields; flags given here override it."),
        keypoints: Optional[Path] = typer.Option(None, "--keypoints", help="Folder of OpenPose JSON files mirroring "
                                                 "the dataset (selects the openpose-json source). Default: "
                                                 "ROOT/keypoints when it exists, else the mmpose model."),
        posegan_csv: Optional[List[Path]] = typer.Option(None, "--posegan-csv", help="pose-gan market-annotation "
                                                         "CSV (repeatable; selects the posegan-csv source)."),
        pose_source: Optional[str] = typer.Option(None, "--pose-source", help=", ".join(pose_source_kinds())
                                                  + ", a chain tried per image in order (e.g. "
                                                  "posegan-csv,blazepose), or auto. (default: auto = openpose-json "
                                                  "if ROOT/keypoints exists, else mmpose if its weights are at "
                                                  "hand, else blazepose)"),
        pose_checkpoint: Optional[Path] = typer.Option(None, "--pose-checkpoint", help="mmpose checkpoint file "
                                                       "(selects the mmpose source; default: mmpose's download)."),
        pose_config: Optional[str] = typer.Option(None, "--pose-config", help="mmpose top-down COCO-17 config: a "
                                                  "shipped name or a config path (selects the mmpose source; "
                                                  "default: rtmpose-s_coco17-256x192)."),
        pose_option: Optional[List[str]] = typer.Option(None, "--pose-option", help="KEY=VALUE option of the pose "
                                                        "source (repeatable), e.g. checkpoint=PATH, device=cpu; "
                                                        "KIND.KEY=VALUE for one source of a chain, e.g. "
                                                        "blazepose.roi_scale=1.25."),
        dataset_option: Optional[List[str]] = typer.Option(None, "--dataset-option", help="KEY=VALUE option of the "
                                                           "dataset reader (repeatable), e.g. protocol=new."),
        beta: Optional[float] = typer.Option(None, "--beta", help="Region overlap as a fraction of the body height "
                                             "H (paper: 0.1; its best 3/48=0.0625)." + _d("beta")),
        region_width: Optional[str] = typer.Option(None, "--region-width", help="Region width: 'paper' (Eq. 1, at "
                                                   "least H/2, may reach outside the image) or 'image' (clipped to the "
                                                   "image columns)." + _d("region_width")),
        threshold: Optional[float] = typer.Option(None, "--threshold", help="Joints scoring below are repaired from "
                                                  "the canonical poses." + _d("threshold")),
        min_reliable: Optional[int] = typer.Option(None, "--min-reliable", help="Fewer reliable joints -> fallback "
                                                   "fit to the image frame." + _d("min_reliable")),
        bank: Optional[Path] = typer.Option(None, "--bank", help="Canonical pose bank JSON. (default: the bank "
                                            "shipped with posecrop)"),
        body_size: Optional[str] = typer.Option(None, "--body-size", help="Whole-body crop HEIGHTxWIDTH." +
                                                _d("body_size")),
        part_size: Optional[str] = typer.Option(None, "--part-size", help="Part crops HEIGHTxWIDTH." + _d("part_size")),
        encoding: Optional[str] = typer.Option(None, "--encoding", help="Crop encoding: jpeg or png." +
                                               _d("encoding")),
        jpeg_quality: Optional[int] = typer.Option(None, "--jpeg-quality", help="JPEG quality 1-100." +
                                                   _d("jpeg_quality")),
        fill: Optional[str] = typer.Option(None, "--fill", help="Colour of box areas outside the image: mean (the "
                                           "image's mean colour) or zeros." + _d("fill")),
        region_joints: Optional[str] = typer.Option(None, "--region-joints", help="JSON object overriding joint "
                                                    "lists, e.g. '{\"head\": [\"nose\", \"neck\"]}'."),
        shard: Optional[str] = typer.Option(None, "--shard", help="Process shard i/n of the images (stable hash of "
                                            "the image id); shards can run at the same time." + _d("shard")),
        workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (0: all in this process). "
                                              "(default: min(4, CPUs))"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per pose batch / worker task." +
                                                 _d("batch_size")),
        rows_per_part: Optional[int] = typer.Option(None, "--rows-per-part", help="Rows of a split per Parquet part "
                                                    "file (finished work is on disk every this many rows)." +
                                                    _d("rows_per_part")),
        limit: Optional[int] = typer.Option(None, "--limit", help="Process at most this many new images."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    ) -> None:
        import json
        import tomllib

        from rich.console import Console

        from reidkit.typedconfig import ConfigError, from_mapping, merge

        from .cache import CacheLockedError
        from .cache_reader import CacheError
        from .crop_pool import WorkerPoolError
        from .crop_stage import CropConfig, run_crop
        from .datasets import DatasetLayoutError
        from .sources import PoseReadError

        values: dict = {}
        if config is not None:
            try:
                doc = tomllib.loads(config.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
                _fail(f"{config}: cannot read the recipe ({getattr(e, 'strerror', None) or e})")
            section = doc.get("crop", doc)
            if not isinstance(section, dict):
                _fail(f"{config}: 'crop' must be a table, got {type(section).__name__}")
            values = dict(section)
            ds = doc.get("dataset")
            if "crop" in doc and isinstance(ds, dict):  # a recipe: its [dataset] table says what to read
                for key, field in (("name", "dataset"), ("root", "root"), ("options", "dataset_options")):
                    if key in ds and field not in values:
                        values[field] = ds[key]
            for key in ("pose_options", "dataset_options"):
                if key in values and not isinstance(values[key], dict):
                    _fail(f"{config}: crop.{key} must be a table, got {type(values[key]).__name__}")
        pose_options = parse_options(pose_option, "--pose-option")
        kind = pose_source
        if keypoints is not None:
            kind = kind or "openpose-json"
            pose_options.setdefault("keypoints_dir", str(keypoints))
        if posegan_csv:
            kind = kind or "posegan-csv"
            pose_options.setdefault("csv_paths", [str(p) for p in posegan_csv])
        if pose_checkpoint is not None or pose_config is not None:
            kind = kind or "mmpose"
            if pose_checkpoint is not None:
                pose_options.setdefault("checkpoint", str(pose_checkpoint))
            if pose_config is not None:
                pose_options.setdefault("config", pose_config)
        overrides = {
            "dataset": dataset, "root": root, "out": out, "pose_source": kind,
            "pose_options": {**values.get("pose_options", {}), **pose_options} if pose_options else None,
            "dataset_options": ({**values.get("dataset_options", {}), **parse_options(dataset_option,
                                 "--dataset-option")} if dataset_option else None),
            "beta": beta, "region_width": region_width, "threshold": threshold, "min_reliable": min_reliable,
            "bank": bank,
            "body_size": parse_size(body_size, "--body-size") if body_size is not None else None,
            "part_size": parse_size(part_size, "--part-size") if part_size is not None else None,
            "encoding": encoding, "jpeg_quality": jpeg_quality, "fill": fill, "shard": shard, "workers": workers,
            "batch_size": batch_size, "rows_per_part": rows_per_part, "limit": limit, "progress": progress,
        }
        if region_joints is not None:
            try:
                overrides["region_joints"] = json.loads(region_joints)
            except ValueError as e:
                raise typer.BadParameter(f"not JSON: {e}", param_hint="--region-joints") from None
        try:
            cfg = merge(from_mapping(CropConfig, values), overrides)
        except ConfigError as e:
            _fail(f"crop configuration: {e}")
        if "root" not in values and root is None or "out" not in values and out is None:
            _fail("--root and --out are required (or set root/out in the --config recipe)")
        console = Console()
        try:
            summary = run_crop(cfg)
        except KeyboardInterrupt:
            _fail(f"interrupted; the rows written so far are kept in {cfg.out} - run the same command again to "
                  f"continue", EXIT_INTERRUPTED)
        except CacheLockedError as e:
            _fail(str(e), EXIT_LOCKED)
        except (CacheError, DatasetLayoutError, PoseReadError, WorkerPoolError, ValueError, OSError) as e:
            _fail(f"{type(e).__name__}: {e}")
        console.print(
            f"[bold]{summary.cache}[/] shard {summary.shard}: {summary.written} rows written "
            f"({', '.join(f'{k} {v}' for k, v in summary.per_split.items())}), {summary.already_done} already there, "
            f"{summary.failed} failed, {summary.skipped} skipped"
            + (f", {summary.excluded} junk (pid -1, excluded by the protocol)" if summary.excluded else "")
            + f" in {summary.seconds:.1f}s; "
            f"repaired joints {summary.repaired_joints:.1%}, fallback {summary.fallback_joints:.1%}; pose source "
            f"{', '.join(f'{k} {v}' for k, v in sorted(summary.pose_sources.items())) or '-'}."
            + (f" See {summary.report}" if summary.failed or summary.skipped else ""), highlight=False)
        if summary.pose_issues.get("implausible"):
            console.print(_issue_line("implausible poses (kept)", summary.pose_issues), highlight=False)
        if summary.failed or summary.skipped:
            _list_problems(cfg.out, summary.run_id)

    @app.command("info", help="Describe a crop cache: rows, identities and cameras per split, share of repaired / "
                              "fallback joints, boxes outside the image, the report, and how the cache was made.")
    def info(
        cache: Path = typer.Argument(..., help="Cache folder (as written by `crop`)."),
        as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON instead of tables."),
    ) -> None:
        import json

        from rich.console import Console
        from rich.table import Table

        from .cache import cache_info
        from .cache_reader import CacheError
        from .regions import REGION_NAMES

        try:
            data = cache_info(cache)
        except CacheError as e:
            _fail(str(e))
        console = Console()
        if as_json:
            console.print_json(json.dumps(data))
            return
        t = Table(title=f"crop cache {cache}")
        for col in ("split", "rows", "ids", "cameras", "parts", "repaired joints", "fallback joints",
                    "body box outside", "implausible", "duplicates"):
            t.add_column(col, justify="left" if col == "split" else "right", no_wrap=col == "split")
        for split, s in data["splits"].items():
            t.add_row(split, str(s["rows"]), str(s["ids"]), str(s["cameras"]), str(s["parts"]),
                      f"{s['repaired_joints']:.1%}", f"{s['fallback_joints']:.1%}", f"{s['body_outside']:.1%}",
                      "n/a" if s.get("pose_issues") is None else str(s["pose_issues"]["implausible"]),
                      str(s["duplicates"]))
        console.print(t)
        console.print("pose source of the rows: " + "; ".join(
            f"{split} " + ", ".join(f"{k} {v}" for k, v in (s.get("pose_sources") or {}).items())
            for split, s in data["splits"].items()), highlight=False)
        for split, s in data["splits"].items():
            if s.get("pose_issues") and s["pose_issues"]["implausible"]:
                console.print(_issue_line(f"{split}: implausible poses", s["pose_issues"]), highlight=False)
        st = data["settings"]
        t2 = Table(title="how it was made", show_header=False)
        t2.add_column("key")
        t2.add_column("value", overflow="fold")
        src = st.get("pose_source") or {}
        for key, value in (
            ("format version", st.get("format_version")),
            ("dataset", st.get("dataset")),
            ("pose source", ", ".join(f"{k}={v}" for k, v in src.items() if not isinstance(v, (list, dict)))),
            ("beta (fraction of H)", st.get("beta")),
            ("threshold / min reliable", f"{st.get('threshold')} / {st.get('min_reliable')}"),
            ("crop sizes (HxW)", ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in (st.get("crop_sizes") or {}).items())),
            ("encoding", ", ".join(f"{k}={v}" for k, v in (st.get("encoding") or {}).items())),
            ("fill", st.get("fill")),
            ("canonical bank sha256", st.get("canonical_bank_sha256")),
            ("plausibility rules", ", ".join(f"{k}={v}" for k, v in
                                             ((st.get("plausibility") or {}).get("rules") or {}).items()) or "none"),
            ("regions", "; ".join(f"{k}: {' '.join(st['regions'][k]['joints'])}" for k in REGION_NAMES
                                  if k in (st.get("regions") or {}))),
        ):
            t2.add_row(key, str(value))
        console.print(t2)
        for split, reason in data.get("empty_splits", {}).items():  # train / evaluate will refuse such a cache
            from rich.markup import escape
            console.print(f"[bold yellow]warning:[/] split {split!r} has no rows: {escape(reason)}", soft_wrap=True,
                          highlight=False)
        rep = data["report"]
        console.print(f"report {rep['path']}: {rep['runs']} run(s), {rep['failed']} failed and {rep['skipped']} "
                      f"skipped entries (last run: {rep['last_run_failed']} failed), {rep.get('implausible', 0)} "
                      "implausible poses named (images kept)", highlight=False)

    @app.command("show", help="Contact sheet PNG of a crop cache: sampled source images with keypoints (repaired "
                              "ones marked) and the five boxes, then the five crops side by side.")
    def show(
        cache: Path = typer.Argument(..., help="Cache folder."),
        out: Path = typer.Option(Path("sheet.png"), "--out", help="PNG file to write."),
        n: int = typer.Option(8, "--n", min=1, max=200, help="Number of images on the sheet."),
        split: Optional[str] = typer.Option(None, "--split", help="Only this split (train, query, gallery). "
                                            "(default: all)"),
        seed: int = typer.Option(0, "--seed", help="Seed of the image sample."),
        implausible: bool = typer.Option(False, "--implausible", help="Only images whose pose the plausibility "
                                         "rules distrusted (repaired or placed by the frame fallback)."),
    ) -> None:
        from .cache_reader import CacheError
        from .show import contact_sheet

        try:
            path = contact_sheet(cache, out, n=n, split=split, seed=seed, implausible=implausible)
        except (CacheError, OSError) as e:
            _fail(str(e))
        typer.echo(f"wrote {path}")

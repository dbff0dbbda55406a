"""CLI command `synth`: the built-in synthetic Market-1501-layout dataset (see posecrop.synth)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)


def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the dataset into (created; must be empty, new, "
                             "or an earlier synth output of the same config, which is then completed)."),
    preset: str = typer.Option("demo", "--preset", help="Size preset: 'demo' (40+40 identities, 6 cameras, "
                               "~1,140 images, ~15 s) or 'tiny' (3+3 identities, 3 cameras, ~60 images)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives byte-identical files."),
    num_ids_train: Optional[int] = typer.Option(None, "--num-ids-train",
                                                help="Train identities (default: from the preset)."),
    num_ids_test: Optional[int] = typer.Option(None, "--num-ids-test",
                                               help="Test (query/gallery) identities (default: from the preset)."),
    num_cameras: Optional[int] = typer.Option(None, "--num-cameras", help="Cameras, 2-6 (default: from the preset)."),
    images_per_camera: Optional[int] = typer.Option(None, "--images-per-camera",
                                                    help="Train/gallery images per identity and camera (default: "
                                                         "from the preset)."),
    num_distractors: Optional[int] = typer.Option(None, "--num-distractors",
                                                  help="Gallery distractors, pid 0000 (default: from the preset)."),
    num_junk: Optional[int] = typer.Option(None, "--num-junk",
                                           help="Gallery junk images, pid -1 (default: from the preset)."),
    no_person_rate: Optional[float] = typer.Option(None, "--no-person-rate",
                                                   help="Fraction of images whose keypoint file finds no person "
                                                        "(default: 0.10)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier synth dataset of another config in "
                                   "OUT (off by default)."),
    preview: bool = typer.Option(True, "--preview/--no-preview", help="Write OUT/preview.png, a contact sheet of a "
                                 "few identities."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Render a synthetic Market-1501-layout pedestrian dataset with OpenPose-format keypoints (the demo's default
    data)."""
    import dataclasses

    from rich.console import Console
    from rich.table import Table

    from posecrop import synth as S
    from reidkit.typedconfig import ConfigError, merge

    console = Console()
    try:
        cfg = S.preset(preset)
        overrides = {"seed": seed, "num_ids_train": num_ids_train, "num_ids_test": num_ids_test,
                     "num_cameras": num_cameras, "images_per_id_per_camera": images_per_camera,
                     "num_distractors": num_distractors, "num_junk": num_junk}
        if num_cameras is not None:  # keep the preset's cameras-per-identity range inside the camera count
            lo, hi = cfg.cameras_per_id
            overrides["cameras_per_id"] = (min(lo, num_cameras), min(hi, num_cameras))
        cfg = merge(cfg, overrides)
        if no_person_rate is not None:
            cfg = dataclasses.replace(cfg, faults=merge(cfg.faults, {"no_person_rate": no_person_rate}))
    except (ConfigError, ValueError) as e:
        raise typer.BadParameter(str(e)) from e
    try:
        summary = S.generate(cfg, out, progress=progress, overwrite=overwrite, preview=preview)
    except S.SynthError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e

    table = Table(title=f"synthetic dataset in {summary.out}", show_header=True)
    table.add_column("split")
    table.add_column("folder")
    table.add_column("images", justify="right")
    for split, folder in S.SPLIT_FOLDERS.items():
        table.add_row(split, folder, str(summary.images[split]))
    console.print(table)
    console.print(f"identities: {summary.num_ids_train} train, {summary.num_ids_test} test; cameras: "
                  f"{summary.num_cameras}; gallery extras: {summary.distractors} distractors (0000), "
                  f"{summary.junk} junk (-1)")
    console.print(f"keypoints: {out / S.KEYPOINTS_FOLDER} (OpenPose 1.3 JSON, COCO-18; {summary.no_person} images "
                  f"with no person found); truth: {out / S.TRUTH_FILE}")
    if preview:
        console.print(f"preview: {out / S.PREVIEW_FILE}")
    console.print(f"{summary.total} images in {summary.seconds:.1f} s")

"""The comparison report of a recipe run (issue 12, item 5): one row per trained model, beside its paper.

    rows = comparison_rows(run_dirs)            run folders (OUT/runs/<model>) -> ComparisonRow each
    text = render_markdown(rows, title)         the table as markdown (+ notes on what the columns mean)
    write_comparison(out)                       OUT/comparison.md, comparison.json, comparison_ranked.png

A row holds what the run measured - CMC R1/R5/R10 and mAP (mINP when the evaluation has it) from
eval/metrics.json, the median training images/s over the epochs of metrics.jsonl - and what the model costs at
the sizes it was trained at: parameters without the identity classifiers and multiply-accumulates for one
sample (reidtrain.model.complexity.count on the model rebuilt from model.pt). Beside them: the figures the
model's own paper reports (PaperRow.reported of the registry) on the run's dataset, or, when the paper has
none for it (CUHK01, the synthetic data), on Market-1501, with the dataset named in the row.

The ranked-list picture has one row per model below the queries: the same queries (evaluate's ranked.json
picks them from the query split alone, one per identity) and each model's top-k gallery images, framed green
(same identity) or red.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from reidkit.atomic import atomic_write_text
from reidkit.errors import ReidError

METRIC_COLUMNS = ("R1", "R5", "R10", "mAP", "mINP")
PAPER_COLUMNS = ("R1", "R5", "R10", "mAP")
FALLBACK_PAPER_DATASET = "market"
MARKDOWN_FILE, JSON_FILE, RANKED_FIGURE = "comparison.md", "comparison.json", "comparison_ranked.png"


class ComparisonError(ReidError, ValueError):
    """A run folder that lacks what the comparison reads (trained model, evaluation); names the file."""


@dataclass
class ComparisonRow:
    model: str
    run: str
    dataset: str                     # as the evaluation names it (the synthetic data: "market", its layout)
    protocol: str
    epochs: int
    inputs: str                      # the trained input sizes, e.g. "64x32 + 4 x 16x32"
    options: dict[str, Any]
    metrics: dict[str, float]        # METRIC_COLUMNS present in eval/metrics.json, percent
    params_m: float                  # without the identity classifiers, millions
    macs_g: float                    # per sample at the trained sizes, classifiers excluded, G
    images_per_s: float | None       # median over the epochs of metrics.jsonl
    paper_source: str = ""
    paper_dataset: str | None = None
    paper: dict[str, float] = field(default_factory=dict)
    paper_params_m: float | None = None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ComparisonError(f"{path}: not found ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ComparisonError(f"{path}: not valid JSON ({e})") from e


def training_speed(metrics_jsonl: Path) -> float | None:
    """Median images/s over the epochs of a run's metrics.jsonl (None: no epoch logged)."""
    try:
        lines = metrics_jsonl.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    values = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ComparisonError(f"{metrics_jsonl}: line {i} is not valid JSON ({e})") from e
        if isinstance(row.get("images_per_s"), (int, float)):
            values.append(float(row["images_per_s"]))
    return statistics.median(values) if values else None


def sizes_text(input_sizes: Mapping[str, Sequence[int]]) -> str:
    """'64x32 + 4 x 16x32': the input sizes, repeated sizes counted."""
    counts: dict[str, int] = {}
    for size in input_sizes.values():
        key = f"{int(size[0])}x{int(size[1])}"
        counts[key] = counts.get(key, 0) + 1
    return " + ".join(k if n == 1 else f"{n} x {k}" for k, n in counts.items())


def paper_figures(model: str, dataset: str) -> tuple[str, str | None, dict[str, float], float | None]:
    """(source, dataset, reported metrics, reported params M) of `model`'s paper: on `dataset` when the paper
    reports it, else on Market-1501 (FALLBACK_PAPER_DATASET), else none."""
    from .model.registry import UnknownModelError, get_model

    try:
        paper = get_model(model).paper
    except UnknownModelError:
        return "", None, {}, None
    if paper is None:
        return "", None, {}, None
    for name in (dataset, FALLBACK_PAPER_DATASET):
        if paper.reported.get(name):
            return paper.source, name, dict(paper.reported[name]), paper.params_m
    return paper.source, None, {}, paper.params_m


def run_row(run_dir: Path) -> ComparisonRow:
    """The comparison row of one trained and evaluated run folder."""
    from .evaluate import load_trained
    from .model.complexity import count

    run_dir = Path(run_dir)
    metrics = _read_json(run_dir / "eval" / "metrics.json", "run `cli.py evaluate` on the run first")
    model_pt = run_dir / "model.pt"
    if not model_pt.is_file():
        raise ComparisonError(f"{model_pt}: not found (the run has not finished training)")
    net, meta, epoch = load_trained(model_pt, "cpu")
    report = count(net, net.example_inputs(1), group_of=net.complexity_group)
    name = str(meta["model"])
    dataset = str(metrics.get("dataset", ""))
    source, paper_dataset, reported, paper_params = paper_figures(name, dataset)
    return ComparisonRow(
        model=name, run=str(run_dir), dataset=dataset, protocol=str(metrics.get("protocol", "")),
        epochs=int(metrics.get("epoch", epoch)), inputs=sizes_text({k: s.size for k, s in net.inputs.items()}),
        options=dict(meta.get("model_options") or {}),
        metrics={c: float(metrics[c]) for c in METRIC_COLUMNS if isinstance(metrics.get(c), (int, float))},
        params_m=report.params_without_classifiers / 1e6, macs_g=report.macs / 1e9,
        images_per_s=training_speed(run_dir / "metrics.jsonl"), paper_source=source, paper_dataset=paper_dataset,
        paper={k: float(v) for k, v in reported.items()}, paper_params_m=paper_params)


def comparison_rows(run_dirs: Sequence[Path]) -> list[ComparisonRow]:
    """One row per run folder, in the given order."""
    return [run_row(Path(d)) for d in run_dirs]


def recipe_runs(out: Path) -> list[Path]:
    """The run folders of a recipe output folder OUT: OUT/runs/<model> with a model.pt and an evaluation, in the
    recipe's [model] order (OUT/recipe-effective.json) and then by name."""
    out = Path(out)
    runs = sorted(p for p in (out / "runs").glob("*") if (p / "model.pt").is_file()
                  and (p / "eval" / "metrics.json").is_file())
    order: list[str] = []
    effective = out / "recipe-effective.json"
    if effective.is_file():
        names = _read_json(effective, "the recipe of the run").get("model", {}).get("names", [])
        order = [str(n) for n in names] if isinstance(names, list) else []
    rank = {n: i for i, n in enumerate(order)}
    return sorted(runs, key=lambda p: (rank.get(p.name, len(rank)), p.name))


# ---------------------------------------------------------------------------------------------- rendering
def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_cells(rows: Sequence[ComparisonRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the comparison table (markdown and the console table share them)."""
    metric_cols = [c for c in METRIC_COLUMNS if any(c in r.metrics for r in rows)]
    header = ["model", "inputs", "epochs", *metric_cols, "params M", "GMACs", "train img/s",
              "paper dataset", *[f"paper {c}" for c in PAPER_COLUMNS], "paper params M"]
    cells = []
    for r in rows:
        cells.append([r.model, r.inputs, str(r.epochs), *[_num(r.metrics.get(c)) for c in metric_cols],
                      f"{r.params_m:.2f}", f"{r.macs_g:.3f}", _num(r.images_per_s, 1), r.paper_dataset or "-",
                      *[_num(r.paper.get(c)) for c in PAPER_COLUMNS], _num(r.paper_params_m, 1)])
    return header, cells


NOTES = (
    "R1/R5/R10/mAP: this run's evaluation (percent; the protocol named above). params: without the identity "
    "classifiers, every parameter once; GMACs: multiply-accumulates of convolutions and linear layers for one "
    "sample at the trained input sizes (reidtrain.model.complexity); train img/s: the median over the epochs of "
    "metrics.jsonl (wall clock of the epoch loop, loader included; with [recipe] jobs > 1 several models shared "
    "the CPU). paper: the figures the model's own paper reports (five-branch variants: Yang et al. 2019, Tables "
    "3-6; HP-net: as quoted there) on the run's dataset, else on Market-1501; the papers train 60-160 epochs at "
    "160x64-384x192, most from ImageNet weights."
)


def render_markdown(rows: Sequence[ComparisonRow], title: str, description: str = "",
                    notes: Sequence[str] = ()) -> str:
    header, cells = table_cells(rows)
    datasets = sorted({f"{r.dataset} ({r.protocol} protocol)" for r in rows})
    lines = [f"# {title}", ""]
    if description:
        lines += [description, ""]
    if datasets:
        lines += [f"Evaluated on: {', '.join(datasets)}.", ""]
    right = {i for i, h in enumerate(header) if h not in ("model", "inputs", "paper dataset")}
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    lines += ["", NOTES, *[f"\n{n}" for n in notes]]
    options = [f"- {r.model}: " + ", ".join(f"{k}={v!r}" for k, v in r.options.items()) for r in rows if r.options]
    if options:
        lines += ["", "Model options of the runs:", "", *options]
    return "\n".join(lines) + "\n"


def rich_table(rows: Sequence[ComparisonRow], title: str):
    from rich.table import Table

    header, cells = table_cells(rows)
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="left" if h in ("model", "inputs", "paper dataset") else "right")
    for row in cells:
        table.add_row(*row)
    return table


# ---------------------------------------------------------------------------------------------- picture
def plot_ranked_rows(query_images: Sequence[Any], gallery: Mapping[str, Sequence[Sequence[Any]]],
                     correct: Mapping[str, Any], path: Path, query_titles: Sequence[str] | None = None,
                     cell_size: tuple[int, int] = (96, 48), frame_width: int = 4) -> Path:
    """One row per model: for each query (shown once, in the top row, above its block) the model's top-k gallery
    images framed green (same identity) or red. gallery: model -> per query the ranked images (None: missing);
    correct: model -> (queries, k) booleans."""
    import numpy as np
    from matplotlib.figure import Figure

    from .reports import QUERY_COLOR, RIGHT_COLOR, WRONG_COLOR, _framed, _image_axes, _resize, _save, to_rgb_array

    n, models = len(query_images), list(gallery)
    if n == 0 or not models:
        raise ValueError("plot_ranked_rows: no queries or no models")
    if set(correct) != set(models):
        raise ValueError(f"correct has models {sorted(correct)}, gallery has {sorted(models)}")
    if query_titles is not None and len(query_titles) != n:
        raise ValueError(f"{len(query_titles)} titles for {n} queries")
    for m in models:
        if len(gallery[m]) != n:
            raise ValueError(f"model {m!r}: {len(gallery[m])} ranked lists for {n} queries")
    k = max(len(row) for m in models for row in gallery[m])
    widths: list[float] = []
    for q in range(n):
        widths += ([0.3] if q else []) + [1.0] * k
    ch, cw = cell_size
    cell_in = 0.62
    fig = Figure(figsize=(sum(widths) * cell_in + 1.6, (len(models) + 1) * cell_in * ch / cw + 0.5))
    grid = fig.add_gridspec(len(models) + 1, len(widths), width_ratios=widths, wspace=0.08, hspace=0.2)
    for q in range(n):
        start = q * (k + 1)
        ax = fig.add_subplot(grid[0, start])
        _image_axes(ax, _framed(_resize(to_rgb_array(query_images[q]), cell_size), QUERY_COLOR, frame_width))
        ax.set_title("query" + (f"\n{query_titles[q]}" if query_titles else ""), fontsize=8)
        for r, m in enumerate(models, 1):
            marks = np.asarray(correct[m], dtype=bool).reshape(n, -1) if np.size(correct[m]) else None
            for j in range(k):
                ax = fig.add_subplot(grid[r, start + j])
                img = gallery[m][q][j] if j < len(gallery[m][q]) else None
                if img is not None:
                    ok = marks is not None and j < marks.shape[1] and bool(marks[q, j])
                    img = _framed(_resize(to_rgb_array(img), cell_size), RIGHT_COLOR if ok else WRONG_COLOR,
                                  frame_width)
                _image_axes(ax, img)
                if r == 1:
                    ax.set_title(str(j + 1), fontsize=8)
                if q == 0 and j == 0:
                    ax.set_ylabel(m, fontsize=9, rotation=0, ha="right", va="center", labelpad=6)
    return _save(fig, path)


def ranked_figure(run_dirs: Sequence[Path], path: Path, cache: Path | None = None) -> Path | None:
    """The ranked-list picture of the runs from their eval/ranked.json (runs whose queries differ from the first
    run's are left out); images from `cache` (default: the cache the first evaluation names, else OUT/cache).
    None when no run has ranked lists."""
    from .evaluate import RANKED_FILE, ranked_list_images

    lists: dict[str, dict] = {}
    caches = []
    for run in map(Path, run_dirs):
        ranked = run / "eval" / RANKED_FILE
        if ranked.is_file():
            metrics = _read_json(run / "eval" / "metrics.json", "the run's evaluation")
            lists[str(metrics.get("model", run.name))] = _read_json(ranked, "the run's ranked lists")
            caches += [Path(metrics["cache"])] if metrics.get("cache") else []
            caches.append(run.parent.parent / "cache")
    if not lists:
        return None
    first = next(iter(lists.values()))
    if not first["queries"]:
        return None
    lists = {m: r for m, r in lists.items() if r["queries"] == first["queries"]}
    cache = Path(cache) if cache is not None else next((c for c in caches if (c / "query").exists()), None)
    if cache is None:
        raise ComparisonError(f"{path}: no crop cache found for the ranked-list images (tried {caches[:2]})")
    queries, gallery, titles = ranked_list_images(cache, lists)
    return plot_ranked_rows(queries, gallery, {m: r["correct"] for m, r in lists.items()}, path, titles)


def write_comparison(out: Path, run_dirs: Sequence[Path] | None = None, title: str | None = None,
                     description: str = "", notes: Sequence[str] = ()) -> tuple[list[ComparisonRow], list[Path]]:
    """comparison.md / comparison.json (and comparison_ranked.png) in `out` for `run_dirs` (default: the
    runs of the recipe output folder `out`). Returns the rows and the files written."""
    out = Path(out)
    runs = list(run_dirs) if run_dirs is not None else recipe_runs(out)
    if not runs:
        raise ComparisonError(f"{out}: no trained and evaluated run (runs/<model>/model.pt and eval/metrics.json)")
    effective = out / "recipe-effective.json"
    recipe = _read_json(effective, "the recipe of the run") if effective.is_file() else {}
    info = recipe.get("recipe", {}) if isinstance(recipe, dict) else {}
    title = title or f"{info.get('name') or out.name}: model comparison"
    description = description or str(info.get("description", ""))
    if isinstance(recipe, dict) and "synth" in recipe:
        notes = [*notes, "Dataset: the synthetic pedestrians of posecrop.synth in Market-1501's layout (the "
                         "evaluation calls it 'market'); the paper columns are Market-1501 figures."]
    rows = comparison_rows(runs)
    files = [out / MARKDOWN_FILE, out / JSON_FILE]
    atomic_write_text(files[0], render_markdown(rows, title, description, notes))
    atomic_write_text(files[1], json.dumps({"title": title, "rows": [asdict(r) for r in rows]}, indent=1))
    figure = ranked_figure(runs, out / RANKED_FIGURE)
    return rows, files + ([figure] if figure is not None else [])

"""Real-data accuracy benchmark: does the pipeline learn real people, and does the full model beat the baseline?

    python -m benchmarks.bench_accuracy [--epochs 14] [--seeds 0 1 2] [--jobs 2] [--work DIR] [--misalign 1]
    python cli.py bench --accuracy [same options]

CUHK01 (`../shared/realdata/cuhk01`, 971 identities x 4 images, 60x160), the 485 / 486 identity split 0 of the
`cuhk01` reader, BlazePose keypoints (`--pose-source blazepose`, computed by the crop stage), reduced input sizes
(body 64x32, parts 16x32 by default), `baseline`, `aligned` and `intra-inter` trained from scratch with the demo's
schedule for every seed, each run one process with one torch thread, `jobs` runs at a time. Evaluation: query =
camera A, gallery = camera B; the table reports the multi-shot ranking (every camera-A image against every
camera-B image, two true matches per query: R1 / R5 / mAP) and the single-shot R1 (one image per identity and
camera, 10 seeded draws).

Writes into --results (default benchmarks/results): accuracy.md (the table: mean +- std and min-max over the
seeds per model, the settings, the wall time), accuracy.json (every run) and accuracy_cmc.png (mean multi-shot
CMC per model with its min-max band over the seeds). Work files (the crop cache, the runs) go to --work (default
/tmp/posecrop-bench-accuracy); a killed benchmark resumes: the cache and every finished run are kept.

`--misalign STRENGTH` trains and tests on a copy of CUHK01 in the work folder whose every image is re-cut with
Market-like detector jitter (benchmarks/alignment.py: strength 1 gives the part positions Market-1501's spread;
CUHK01's own hand-cut images keep every part within ~2 % of the image height of the same place, so a fixed strip
already is the aligned region there); results go to accuracy-misaligned.md / .json / _cmc.png. Both reports end
with the strip-agreement table of their cache beside Market-1501's (pose-gan keypoints).

The target of issue 16: intra-inter >= baseline + 3 points of mAP with non-overlapping seed ranges;
`verdict` in accuracy.json says whether it was met.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "realdata" / "cuhk01"
DEFAULT_WORK = Path("/tmp/posecrop-bench-accuracy")
MODELS = ("baseline", "aligned", "intra-inter")
PRIMARY = "cuhk01-multi-shot"
SECONDARY = "cuhk01-single-shot"
TARGET_MAP_GAIN = 3.0
# Controlled experiments (--controls): one change against the benchmark's own run of the same model and seed.
CONTROLS: dict[str, tuple[str, dict]] = {
    "literal attention (attention_norm off)": ("intra-inter", {"extra": {"attention_norm": False}}),
    "paper region width (Eq. 1, H/2)": ("aligned", {"region_width": "paper"}),
}


@dataclass
class BenchConfig:
    root: Path = DEFAULT_ROOT
    work: Path = DEFAULT_WORK
    results: Path = REPO / "benchmarks" / "results"
    models: tuple[str, ...] = MODELS
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 14
    lr_step: int = 10
    lr: float = 0.05
    batch_size: int = 32
    body_size: tuple[int, int] = (64, 32)
    part_size: tuple[int, int] = (16, 32)
    beta: float = 0.0625
    region_width: str = "image"
    jobs: int = 2
    controls: tuple[int, ...] = ()     # seeds of the CONTROLS runs (empty: none)
    pose_source: str = "blazepose"
    misalign: float = 0.0    # > 0: train and test on a copy of CUHK01 with Market-like box jitter (alignment.py)
    extra: dict = field(default_factory=dict)   # further TrainConfig fields (key -> value)

    @property
    def cache(self) -> Path:
        h, w = self.body_size
        return self.work / (f"cache-{self.pose_source}-{h}x{w}-{self.region_width}"
                            + (f"-misalign{self.misalign:g}" if self.misalign else ""))

    @property
    def stem(self) -> str:
        """Stem of the result files: accuracy.md / .json / _cmc.png, accuracy-misaligned.* with --misalign."""
        return "accuracy-misaligned" if self.misalign else "accuracy"

    def dataset_root(self) -> Path:
        """The CUHK01 folder the crop stage reads: the given one, or its misaligned copy in the work folder."""
        if not self.misalign:
            return self.root
        from .alignment import write_misaligned_copy

        images = self.root / "campus" if (self.root / "campus").is_dir() else self.root
        copy = self.work / f"cuhk01-misaligned-{self.misalign:g}"
        write_misaligned_copy(images, copy / "campus", self.misalign)
        return copy

    def run_dir(self, model: str, seed: int) -> Path:
        tag = (f"e{self.epochs}-lr{self.lr}-b{self.batch_size}"
               + "".join(f"-{k}{v}" for k, v in sorted(self.extra.items())))
        return self.work / "runs" / f"{self.cache.name}-{tag}" / f"{model}-s{seed}"


# ------------------------------------------------------------------------------------------------- the stages
def make_cache(cfg: BenchConfig) -> Path:
    """CUHK01 -> BlazePose -> Eq. 1-2 regions -> crop cache (resumes an interrupted crop)."""
    from posecrop.crop_stage import CropConfig, run_crop

    crop = CropConfig(dataset="cuhk01", root=cfg.dataset_root(), out=cfg.cache, pose_source=cfg.pose_source,
                      beta=cfg.beta, body_size=cfg.body_size, part_size=cfg.part_size, region_width=cfg.region_width,
                      workers=max(1, cfg.jobs), progress=True)
    run_crop(crop)
    return cfg.cache


def train_and_evaluate(cfg: BenchConfig, model: str, seed: int) -> dict:
    """Train one model with one seed (resumable), evaluate it; the result is stored as RUN/result.json."""
    import torch

    torch.set_num_threads(1)
    from reidkit.typedconfig import from_mapping
    from reidtrain.config import EvalConfig, TrainConfig
    from reidtrain.evaluate import compute_result, eval_dataset, extract_features, load_trained
    from reidtrain.train import train

    out = cfg.run_dir(model, seed)
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    tcfg = from_mapping(TrainConfig, {
        "cache": str(cfg.cache), "out": str(out), "model": model, "seed": seed, "epochs": cfg.epochs,
        "lr_step": cfg.lr_step, "lr": cfg.lr, "batch_size": cfg.batch_size, "body_size": list(cfg.body_size),
        "part_size": list(cfg.part_size), "workers": 0, "threads": 1, "tensorboard": False,
        "augment": {"flip": True, "pad": 2, "erasing": 0.3}, **cfg.extra})
    t0 = time.perf_counter()
    result = train(tcfg, resume=True, progress=False)
    train_s = time.perf_counter() - t0
    net, meta, _ = load_trained(result.final)
    feats = {s: extract_features(net, eval_dataset(cfg.cache, s, meta), meta["normalize"], "cpu", 128, 0,
                                 progress=False) for s in ("query", "gallery")}
    row = {"model": model, "seed": seed, "epochs": cfg.epochs, "train_s": round(train_s, 1)}
    for protocol in (PRIMARY, SECONDARY):
        r = compute_result(EvalConfig(protocol=protocol), protocol, feats["query"], feats["gallery"])
        s = r.summary((1, 5, 10, 20))
        key = "" if protocol == PRIMARY else "ss_"
        row.update({f"{key}R1": s["R1"], f"{key}R5": s["R5"], f"{key}mAP": s["mAP"]})
        if protocol == PRIMARY:
            row["cmc"] = [100.0 * float(v) for v in r.cmc[:20]]
            row["num_queries"] = int(s["num_valid_queries"])
    from reidkit.atomic import atomic_write_text
    atomic_write_text(done, json.dumps(row))
    return row


def _job(args: tuple) -> dict:
    cfg, model, seed, control = args
    return {**train_and_evaluate(cfg, model, seed), "control": control}


def control_configs(cfg: BenchConfig) -> list[tuple[str, str, BenchConfig]]:
    """(control name, model, the benchmark config with that one change) for CONTROLS."""
    import dataclasses

    out = []
    for name, (model, change) in CONTROLS.items():
        change = {k: ({**cfg.extra, **v} if k == "extra" else v) for k, v in change.items()}
        out.append((name, model, dataclasses.replace(cfg, **change)))
    return out


# ------------------------------------------------------------------------------------------------- the report
def aggregate(rows: list[dict], models: tuple[str, ...]) -> dict[str, dict]:
    """model -> {metric: (mean, std, min, max)} over its seeds (std: sample standard deviation, ddof=1)."""
    import numpy as np

    out: dict[str, dict] = {}
    for m in models:
        runs = [r for r in rows if r["model"] == m]
        if not runs:
            continue
        stats = {}
        for k in ("R1", "R5", "mAP", "ss_R1"):
            v = np.array([r[k] for r in runs], dtype=float)
            stats[k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, float(v.min()), float(v.max()))
        stats["seeds"] = len(runs)
        out[m] = stats
    return out


def verdict(stats: dict[str, dict]) -> dict:
    """The issue's target: intra-inter mAP >= baseline mAP + 3 and the seed ranges of the two do not overlap."""
    if "baseline" not in stats or "intra-inter" not in stats:
        return {"met": None, "reason": "baseline and intra-inter are both needed"}
    b, f = stats["baseline"]["mAP"], stats["intra-inter"]["mAP"]
    gain = f[0] - b[0]
    separate = f[2] > b[3]
    return {"met": bool(gain >= TARGET_MAP_GAIN and separate), "mAP_gain": round(gain, 2),
            "ranges_separate": bool(separate), "baseline_mAP_range": [b[2], b[3]],
            "intra_inter_mAP_range": [f[2], f[3]]}


def plot_cmc(rows: list[dict], models: tuple[str, ...], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    ranks = np.arange(1, 21)
    for m in models:
        curves = np.array([r["cmc"] for r in rows if r["model"] == m])
        if not len(curves):
            continue
        line, = ax.plot(ranks, curves.mean(0), marker="o", ms=3, label=f"{m} ({len(curves)} seeds)")
        ax.fill_between(ranks, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.18)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_xticks([1, 5, 10, 15, 20])
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def format_markdown(cfg: BenchConfig, stats: dict[str, dict], v: dict, wall_s: float, rows: list[dict]) -> str:
    def cell(s):
        mean, std, lo, hi = s
        return f"{mean:.1f} +- {std:.1f} ({lo:.1f}-{hi:.1f})"

    title = ("CUHK01 (486 test identities)" if not cfg.misalign else
             f"CUHK01 (486 test identities) with Market-like box jitter (strength {cfg.misalign:g})")
    lines = [f"# Accuracy on real people: {title}", "",
             f"`python -m benchmarks.bench_accuracy --epochs {cfg.epochs} --seeds {' '.join(map(str, cfg.seeds))}"
             + (f" --misalign {cfg.misalign:g}" if cfg.misalign else "") + "` "
             f"- {time.strftime('%Y-%m-%d %H:%M')}, wall time {wall_s / 60:.0f} min with {cfg.jobs} parallel runs "
             f"of one thread ({os.cpu_count()} cores).", "",
             f"Split 0 of the cuhk01 reader (485 train / 486 test identities), `--pose-source {cfg.pose_source}`, "
             f"regions `{cfg.region_width}` width, beta {cfg.beta:g}, body {cfg.body_size[0]}x{cfg.body_size[1]}, "
             f"parts {cfg.part_size[0]}x{cfg.part_size[1]}, {cfg.epochs} epochs from scratch (lr {cfg.lr:g}, "
             f"/10 after epoch {cfg.lr_step}, batch {cfg.batch_size})"
             + (f", {', '.join(f'{k}={val}' for k, val in cfg.extra.items())}" if cfg.extra else "") + ".",
             "Multi-shot: every camera-A image against every camera-B image (972 queries, two true matches each); "
             "single-shot R1: one image per identity and camera, 10 seeded draws.",
             "Cells: mean +- std (min-max) over the seeds, in percent.", "",
             "| model | seeds | R1 | R5 | mAP | single-shot R1 |", "|---|---|---|---|---|---|"]
    for m, s in stats.items():
        lines.append(f"| {m} | {s['seeds']} | {cell(s['R1'])} | {cell(s['R5'])} | {cell(s['mAP'])} "
                     f"| {cell(s['ss_R1'])} |")
    lines += ["", "Target (issue 16): intra-inter mAP >= baseline mAP + 3 with non-overlapping seed ranges: "
              + ({True: "**met**", False: "**not met**", None: "not decided"}[v["met"]])
              + (f" (gain {v['mAP_gain']:+.1f} mAP, ranges {'separate' if v['ranges_separate'] else 'overlap'})"
                 if v.get("met") is not None else ""), "",
              f"![CMC]({cfg.stem}_cmc.png)", "", "Runs:", "",
              "| model | seed | R1 | R5 | mAP | single-shot R1 | train s |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (cfg.models.index(r["model"]) if r["model"] in cfg.models else 99, r["seed"])):
        lines.append(f"| {r['model']} | {r['seed']} | {r['R1']:.1f} | {r['R5']:.1f} | {r['mAP']:.1f} | "
                     f"{r['ss_R1']:.1f} | {r['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def format_controls(controls: list[dict], rows: list[dict]) -> str:
    """The controlled experiments against the benchmark's run of the same model and seed."""
    if not controls:
        return ""
    lines = ["", "Controlled experiments (one change; the reference is the benchmark's run of the same model and "
             "seed):",
             "", "| change | model | seed | R1 | mAP | reference R1 | reference mAP | mAP difference |",
             "|---|---|---|---|---|---|---|---|"]
    for c in sorted(controls, key=lambda r: (r["control"], r["seed"])):
        ref = next((r for r in rows if r["model"] == c["model"] and r["seed"] == c["seed"]), None)
        if ref is None:
            continue
        lines.append(f"| {c['control']} | {c['model']} | {c['seed']} | {c['R1']:.1f} | {c['mAP']:.1f} | "
                     f"{ref['R1']:.1f} | {ref['mAP']:.1f} | {c['mAP'] - ref['mAP']:+.1f} |")
    return "\n".join(lines) + "\n"


def alignment_rows(cfg: BenchConfig) -> dict[str, dict]:
    """Strip agreement (benchmarks/alignment.py) of this benchmark's cache, and of Market-1501 where its pose-gan
    keypoints are at hand (the dataset whose detector boxes the paper's alignment was made for)."""
    from .alignment import POSEGAN_CSV, cache_boxes, market_posegan_boxes, strip_agreement

    rows = {f"CUHK01{f' misaligned {cfg.misalign:g}' if cfg.misalign else ''} (this cache)":
            strip_agreement(*cache_boxes(cfg.cache))}
    if POSEGAN_CSV.is_dir():
        rows["Market-1501 (pose-gan keypoints)"] = strip_agreement(*market_posegan_boxes(beta=cfg.beta))
    return rows


# ------------------------------------------------------------------------------------------------------ main
def run_benchmark(cfg: BenchConfig) -> dict:
    from reidkit.atomic import atomic_write_text

    from .alignment import format_agreement

    t0 = time.perf_counter()
    print(f"[accuracy] crop cache {cfg.cache} ...", flush=True)
    make_cache(cfg)
    jobs = [(cfg, m, s, None) for s in cfg.seeds for m in cfg.models]
    for name, model, ccfg in control_configs(cfg) if cfg.controls else []:
        if ccfg.cache != cfg.cache:
            make_cache(ccfg)
        jobs += [(ccfg, model, s, name) for s in cfg.controls]
    # the longest runs first, so the last minutes are not one lone intra-inter run
    jobs.sort(key=lambda j: (j[1] != "intra-inter", j[1] != "aligned", j[2], j[3] is not None))
    rows: list[dict] = []
    print(f"[accuracy] {len(jobs)} runs ({', '.join(cfg.models)} x seeds {list(cfg.seeds)}), {cfg.jobs} at a time",
          flush=True)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(max(1, cfg.jobs), maxtasksperchild=1) as pool:
        for row in pool.imap_unordered(_job, jobs):
            rows.append(row)
            control = f" ({row['control']})" if row['control'] else ""
            print(f"[accuracy] {row['model']}{control} seed {row['seed']}: R1 {row['R1']:.1f} R5 {row['R5']:.1f} "
                  f"mAP {row['mAP']:.1f} single-shot R1 {row['ss_R1']:.1f} ({row['train_s'] / 60:.1f} min)", flush=True)
    wall = time.perf_counter() - t0
    controls = [r for r in rows if r["control"]]
    rows = [r for r in rows if not r["control"]]
    stats = aggregate(rows, cfg.models)
    v = verdict(stats)
    cfg.results.mkdir(parents=True, exist_ok=True)
    plot_cmc(rows, cfg.models, cfg.results / f"{cfg.stem}_cmc.png",
             f"CUHK01{' misaligned' if cfg.misalign else ''} multi-shot CMC, {cfg.epochs} epochs, mean and min-max "
             f"over {len(cfg.seeds)} seeds")
    agreement = alignment_rows(cfg)
    md = (format_markdown(cfg, stats, v, wall, rows) + format_controls(controls, rows)
          + "\nHow far the parts move in the images (benchmarks/alignment.py; the baseline's strips are fixed, "
          "the aligned models' part crops follow the pose):\n\n" + format_agreement(agreement))
    atomic_write_text(cfg.results / f"{cfg.stem}.md", md)
    atomic_write_text(cfg.results / f"{cfg.stem}.json", json.dumps(
        {"config": {k: (str(val) if isinstance(val, Path) else val) for k, val in vars(cfg).items()},
         "stats": stats, "verdict": v, "wall_s": round(wall, 1), "runs": rows, "controls": controls,
         "alignment": agreement}, indent=1))
    print(md, flush=True)
    return {"stats": stats, "verdict": v, "wall_s": wall, "rows": rows}


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    d = BenchConfig()
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=d.root, help="CUHK01 folder (holding campus/)")
    p.add_argument("--work", type=Path, default=d.work, help="cache and runs (kept: a rerun resumes)")
    p.add_argument("--results", type=Path, default=d.results, help="folder for accuracy.md/.json/_cmc.png")
    p.add_argument("--models", nargs="+", default=list(d.models))
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr-step", type=int, default=None, help="default: 3/4 of the epochs")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--jobs", type=int, default=d.jobs, help="runs at a time (one thread each)")
    p.add_argument("--region-width", default=d.region_width, choices=("paper", "image"))
    p.add_argument("--misalign", type=float, default=d.misalign, metavar="STRENGTH",
                   help="train and test on a copy of CUHK01 cut with Market-like box jitter (1 = Market-1501's "
                        "spread of the part positions; benchmarks/alignment.py); results go to accuracy-misaligned.*")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="further TrainConfig field")
    p.add_argument("--controls", nargs="*", type=int, default=[], metavar="SEED",
                   help="also run the controlled experiments (CONTROLS) for these seeds")
    a = p.parse_args(argv)
    extra = {}
    for kv in a.set:
        k, _, val = kv.partition("=")
        try:
            extra[k] = json.loads(val)
        except json.JSONDecodeError:
            extra[k] = val
    return BenchConfig(root=a.root, work=a.work, results=a.results, models=tuple(a.models), seeds=tuple(a.seeds),
                       epochs=a.epochs, lr_step=a.lr_step or max(1, round(a.epochs * 3 / 4)), lr=a.lr,
                       batch_size=a.batch_size, jobs=a.jobs, region_width=a.region_width, extra=extra,
                       misalign=a.misalign, controls=tuple(a.controls))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if not (cfg.root / "campus").is_dir() and not any(cfg.root.glob("*.png")):
        print(f"[accuracy] {cfg.root}: no CUHK01 images (expected {cfg.root}/campus/PPPPIII.png)", file=sys.stderr)
        return 2
    run_benchmark(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

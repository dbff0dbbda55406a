"""The recipe runner: one TOML file (pipelines/*.toml) describes a whole experiment; `run` chains synth -> crop ->
train -> evaluate. The one module that drives both stages (posecrop and reidtrain).

Tables (every key optional; unknown keys and wrong types are rejected naming the key):

    [recipe]   name, description
    [dataset]  name (a posecrop dataset reader: market, duke, cuhk03-labeled, ...), root, options
    [synth]    only for the synthetic dataset: preset ("demo" / "tiny") plus SynthConfig fields; the dataset is
               generated into OUT/data and read as Market-1501 layout
    [crop]     CropConfig fields (beta, sizes, pose source, ...) but not dataset / root / out
    [model]    names = the registered models to train and evaluate one after the other (e.g. the Table 6
               ablation); [model.NAME] tables hold a model's options (TrainConfig.model_options)
    [train]    TrainConfig fields but not cache / out / model; body_size / part_size default to [crop]'s sizes
    [eval]     EvalConfig fields but not checkpoint / cache / out
    [sweep]    KEY = [values] of [train] keys (Tables 10-11: lambda_intra, beta): every model is trained and evaluated
               at every point into OUT/runs/<model>@<point>, e.g. intra-inter@lambda=0.1 (reidtrain.sweep)
    [stages]   MODEL = [values of its `stage` option]: staged training (HydraPlus-Net's main net, then each
               attention branch, then the fusion layer): one run per stage into OUT/runs/<model>@stage=<value>,
               each initialised from the previous stage's model.pt (its key folded into the next one's, so a
               changed early stage retrains every later one); only the last stage is evaluated

Layout of a run (OUT, default out/<recipe file stem>):

    OUT/data/                    synthetic dataset ([synth] recipes only)
    OUT/cache/                   the crop cache
    OUT/runs/<model>/            training run of each model (reidtrain.train), its evaluation in eval/
                                 (with a [sweep]: OUT/runs/<model>@<point>/, all points on the one crop cache)
    OUT/results.json, results.md the results table of all models; cmc.png, ranked_list.png and
    OUT/summary.md / .html       the one-page summary comparing them
    OUT/.stages/<stage>.json     what each stage was run with
    OUT/recipe.toml, recipe-effective.json   the recipe file, and its tables after --set overrides

Up-to-date skipping: a stage's key is the hash of its configuration and of the keys of the stages it reads
from. A stage whose record says "done" with the current key and whose outputs exist is skipped; one that
was interrupted with the same key resumes (crop and train resume by themselves); one recorded with another
key (the recipe changed upstream) has its outputs removed and runs again.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from reidkit.atomic import atomic_write_text
from reidkit.typedconfig import ConfigError, from_mapping, to_dict
from reidtrain.config import EvalConfig, TrainConfig, config_hash, result_config

TABLES = ("recipe", "dataset", "synth", "crop", "model", "train", "eval", "sweep", "stages")
RESERVED = {"crop": ("dataset", "root", "out"), "train": ("cache", "out", "model"),
            "eval": ("checkpoint", "cache", "out")}
STAGE_DIR = ".stages"


class RecipeError(ConfigError):
    """A recipe file is unreadable or says something invalid; the message names the file and the key."""


@dataclass
class RecipeInfo:
    name: str = ""
    description: str = ""
    jobs: int = 1       # models trained at the same time (separate processes; meant for CPUs with spare cores)

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")


@dataclass
class DatasetSection:
    name: str = "market"
    root: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelSection:
    names: list[str] = field(default_factory=lambda: ["intra-inter"])

    def __post_init__(self) -> None:
        from reidtrain.model.registry import list_models

        known = list_models()
        bad = [n for n in self.names if n not in known]
        if bad or not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"names must be distinct registered models of {known}, got {self.names}")


@dataclass
class Recipe:
    """A parsed recipe: typed sections; `synth`, `crop`, `train`, `eval` are the TOML tables, already checked
    against their configs (the run fills in the paths)."""

    path: Path
    info: RecipeInfo
    dataset: DatasetSection
    synth: dict | None
    crop: dict
    models: list[str]
    train: dict
    eval: dict
    raw: dict
    model_options: dict[str, dict] = field(default_factory=dict)   # [model.NAME] tables
    sweep: dict[str, list] = field(default_factory=dict)           # [sweep] table (reidtrain.sweep)
    stages: dict[str, list[str]] = field(default_factory=dict)     # [stages] table: model -> its stage values

    @property
    def name(self) -> str:
        return self.info.name or self.path.stem


def _section(cls, data: Any, table: str, where: Path):
    if not isinstance(data, Mapping):
        raise RecipeError(f"{where}: [{table}] must be a table, got {type(data).__name__}")
    try:
        return from_mapping(cls, data, prefix=f"{table}.")
    except ConfigError as e:
        raise RecipeError(f"{where}: {e}") from e


def _check_reserved(table: str, data: Mapping, where: Path) -> None:
    for key in RESERVED.get(table, ()):
        if key in data:
            hint = "[dataset] / --out" if table == "crop" else "the recipe runner and [model] names"
            raise RecipeError(f"{where}: key {table}.{key} is set by `run` ({hint}); remove it from the recipe")


def synth_config(table: Mapping[str, Any], where: Path):
    """SynthConfig from a [synth] table: the named preset ("demo" / "tiny") with the other keys applied."""
    from posecrop import synth as S

    data = dict(table)
    name = data.pop("preset", "demo")
    try:
        base = S.preset(name)
    except ValueError as e:
        raise RecipeError(f"{where}: synth.preset: {e}") from e
    current = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return _section(type(base), {**current, **data}, "synth", where)


def parse_recipe(data: Mapping[str, Any], path: Path) -> Recipe:
    """Check a recipe mapping (as read from TOML) section by section."""
    from posecrop.crop_stage import CropConfig

    unknown = [k for k in data if k not in TABLES]
    if unknown:
        raise RecipeError(f"{path}: unknown table or key {unknown[0]!r} (recipe tables: {', '.join(TABLES)})")
    for table in ("crop", "train", "eval"):
        _check_reserved(table, data.get(table, {}), path)
    info = _section(RecipeInfo, data.get("recipe", {}), "recipe", path)
    dataset = _section(DatasetSection, data.get("dataset", {}), "dataset", path)
    synth = data.get("synth")
    if synth is not None:
        synth_config(synth, path)  # validates
        if dataset.name != "market":
            raise RecipeError(f"{path}: dataset.name must be 'market' with [synth] (the synthetic data has "
                              f"Market-1501's layout), got {dataset.name!r}")
    crop = dict(data.get("crop", {}))
    _section(CropConfig, crop, "crop", path)
    model_table = dict(data.get("model", {}))
    model_options = {k: dict(model_table.pop(k)) for k in list(model_table) if isinstance(model_table[k], dict)}
    models = _section(ModelSection, model_table, "model", path).names
    stray = [k for k in model_options if k not in models]
    if stray:
        raise RecipeError(f"{path}: [model.{stray[0]}] gives options of a model that is not in [model] names {models}")
    train = dict(data.get("train", {}))
    _section(TrainConfig, train, "train", path)
    ev = dict(data.get("eval", {}))
    _section(EvalConfig, ev, "eval", path)
    if synth is None and dataset.root is None:
        raise RecipeError(f"{path}: dataset.root is required (the dataset folder), unless the recipe has [synth]")
    from reidtrain.sweep import check_sweep
    try:
        sweep = check_sweep(data.get("sweep", {}), str(path))
    except ConfigError as e:
        raise RecipeError(str(e)) from e
    stages = _check_stages(data.get("stages", {}), models, path)
    return Recipe(Path(path), info, dataset, dict(synth) if synth is not None else None, crop, models, train, ev,
                  dict(data), model_options, sweep, stages)


def _check_stages(table: Any, models: list[str], path: Path) -> dict[str, list[str]]:
    """[stages] MODEL = ["a", "b", ...]: a model of [model] names with a `stage` option, distinct values it takes."""
    from reidtrain.model.registry import get_model

    if not isinstance(table, Mapping):
        raise RecipeError(f"{path}: [stages] must be a table of MODEL = [stage values], got {type(table).__name__}")
    out: dict[str, list[str]] = {}
    for model, values in table.items():
        if model not in models:
            raise RecipeError(f"{path}: stages.{model}: not a model of [model] names {models}")
        entry = get_model(model)
        if "stage" not in entry.option_names():
            raise RecipeError(f"{path}: stages.{model}: model {model!r} has no 'stage' option")
        if not isinstance(values, list) or len(values) < 2 or len(set(map(str, values))) != len(values):
            raise RecipeError(f"{path}: stages.{model}: expected a list of at least two distinct stage values, "
                              f"got {values!r}")
        for v in values:
            try:
                entry.parse_options({"stage": v})
            except ConfigError as e:
                raise RecipeError(f"{path}: stages.{model}: {e}") from e
        out[model] = [str(v) for v in values]
    return out


def set_override(data: dict, assignment: str) -> None:
    """Apply 'table.key=value' (value in TOML syntax; bare words are strings) to a recipe mapping."""
    key, sep, value = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise RecipeError(f"--set expects TABLE.KEY=VALUE (e.g. train.epochs=5), got {assignment!r}")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise RecipeError(f"--set {assignment!r}: {p!r} is not a table")
    node[parts[-1]] = parsed


def load_recipe(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read and check a recipe TOML file; `overrides` are 'table.key=value' assignments applied first."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from e
    for assignment in overrides:
        set_override(data, assignment)
    return parse_recipe(data, path)


# ---------------------------------------------------------------------------------------------- stage records
@dataclass
class Stage:
    """One step of a run: its key, its output paths, and the function that produces them."""

    name: str
    key: str
    outputs: list[Path]
    action: Any          # callable(resume: bool) -> dict (a summary for the record)
    clean: list[Path] = field(default_factory=list)   # removed when the stage reruns under another key


def _record_path(out: Path, stage: str) -> Path:
    return out / STAGE_DIR / f"{stage.replace('/', '-')}.json"


def _read_record(out: Path, stage: str) -> dict:
    path = _record_path(out, stage)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def stage_plan(out: Path, stage: Stage, force: bool) -> str:
    """'skip' (done with this key, outputs present), 'resume' (interrupted with this key) or 'fresh'."""
    record = _read_record(out, stage.name)
    same_key = record.get("key") == stage.key and not force
    if same_key and record.get("state") == "done" and all(p.exists() for p in stage.outputs):
        return "skip"
    if not record and not force:
        # Outputs with no record of this runner were made by someone else (e.g. hours of `crop --out OUT/cache`):
        # never delete them behind the user's back.
        foreign = [p for p in stage.clean if p.exists() and (p.is_file() or any(p.iterdir()))]
        if foreign:
            raise RecipeError(f"{foreign[0]} exists but was not made by `run` (no record in "
                              f"{_record_path(out, stage.name)}); move it away, choose another --out, or pass "
                              f"--force to replace it")
    return "resume" if same_key and record else "fresh"


def begin_stage(out: Path, stage: Stage, plan: str, say) -> None:
    """Clean the outputs of a stage recorded under another key, note that it is running."""
    if plan == "fresh":
        for p in stage.clean:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    say(f"[bold]{'resuming' if plan == 'resume' else 'running'}[/]  {stage.name}")
    atomic_write_text(_record_path(out, stage.name), json.dumps({"key": stage.key, "state": "running",
                                                                 "started": time.time()}))


def finish_stage(out: Path, stage: Stage, summary: Any, seconds: float) -> None:
    atomic_write_text(_record_path(out, stage.name), json.dumps(
        {"key": stage.key, "state": "done", "seconds": round(seconds, 2),
         "outputs": [str(p) for p in stage.outputs], "summary": summary}, indent=1, default=str))


def run_stage(out: Path, stage: Stage, force: bool, say) -> str:
    """Run `stage` unless it is up to date; returns 'skipped', 'resumed' or 'ran'."""
    plan = stage_plan(out, stage, force)
    if plan == "skip":
        say(f"[green]up to date[/]  {stage.name}")
        return "skipped"
    begin_stage(out, stage, plan, say)
    t0 = time.perf_counter()
    summary = stage.action(plan == "resume")
    finish_stage(out, stage, summary, time.perf_counter() - t0)
    return "resumed" if plan == "resume" else "ran"


def _train_summary(result) -> dict:
    return {"epochs": result.epochs_done, "last": result.history[-1] if result.history else None}


def train_in_process(cfg_dict: dict, resume: bool) -> dict:
    """Train in a child process (parallel models): no progress bars, one console line per epoch."""
    from rich.console import Console

    from reidtrain.train import train
    cfg = from_mapping(TrainConfig, cfg_dict)
    return _train_summary(train(cfg, resume=resume, progress=False, console=Console(stderr=True)))


def run_trainings(out: Path, stages: list[tuple[Stage, TrainConfig]], force: bool, jobs: int, progress: bool,
                  console, say) -> dict[str, str]:
    """The train stages of all models: one after the other, or `jobs` at a time in spawned processes."""
    import concurrent.futures as cf
    import multiprocessing

    from reidtrain.train import train

    status: dict[str, str] = {}
    todo = []
    for stage, cfg in stages:
        plan = stage_plan(out, stage, force)
        if plan == "skip":
            say(f"[green]up to date[/]  {stage.name}")
            status[stage.name] = "skipped"
        else:
            todo.append((stage, cfg, plan))
    if jobs <= 1 or len(todo) <= 1:
        for stage, cfg, plan in todo:
            begin_stage(out, stage, plan, say)
            t0 = time.perf_counter()
            result = train(cfg, resume=plan == "resume", progress=progress, console=console)
            finish_stage(out, stage, _train_summary(result), time.perf_counter() - t0)
            status[stage.name] = "resumed" if plan == "resume" else "ran"
        return status
    with cf.ProcessPoolExecutor(max_workers=min(jobs, len(todo)),
                                mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {}
        for stage, cfg, plan in todo:
            begin_stage(out, stage, plan, say)
            futures[pool.submit(train_in_process, to_dict(cfg), plan == "resume")] = (stage, plan, time.perf_counter())
        for fut in cf.as_completed(futures):
            stage, plan, t0 = futures[fut]
            finish_stage(out, stage, fut.result(), time.perf_counter() - t0)
            status[stage.name] = "resumed" if plan == "resume" else "ran"
    return status


# ------------------------------------------------------------------------------------------------------ run
CROP_BOOKKEEPING = ("workers", "progress", "flush_seconds", "rows_per_part", "batch_size", "out", "root")
EVAL_BOOKKEEPING = ("workers", "threads", "device", "batch_size", "checkpoint", "cache", "out")


@dataclass
class RunResult:
    out: Path
    results: dict[str, dict]            # run (model, or model@point of a sweep) -> metrics (R1.. in percent)
    stages: dict[str, str]              # stage -> skipped / ran / resumed
    files: list[Path] = field(default_factory=list)


def plan_configs(recipe: Recipe, out: Path):
    """The concrete configs of every stage for output folder `out`; trains / evals are keyed by run name (the
    model, or <model>@<point> for each point of a [sweep])."""
    from posecrop.crop_stage import CropConfig

    from reidtrain.sweep import expand_sweep, run_names

    root = out / "data" if recipe.synth is not None else Path(recipe.dataset.root)
    crop = from_mapping(CropConfig, {**recipe.crop, "dataset": recipe.dataset.name, "root": str(root),
                                     "dataset_options": {**recipe.dataset.options,
                                                         **recipe.crop.get("dataset_options", {})},
                                     "out": str(out / "cache")})
    trains, evals = {}, {}
    for run, (model, point) in run_names(recipe.models, expand_sweep(recipe.sweep)).items():
        from reidtrain.model.registry import get_model

        sizes = ({"body_size": list(crop.body_size), "part_size": list(crop.part_size)}
                 if get_model(model).defaults.sizes_from_crop else {})
        t = {**sizes, **recipe.train, **point.overrides, "cache": str(out / "cache"), "out": str(out / "runs" / run),
             "model": model}
        if recipe.model_options.get(model):
            t["model_options"] = {**recipe.train.get("model_options", {}), **recipe.model_options[model]}
        chain = [(f"{run},stage={s}" if point.name else f"{run}@stage={s}", s) for s in recipe.stages.get(model, [])]
        if not chain:
            trains[run] = from_mapping(TrainConfig, t)
            final = run
        previous = None
        for name, value in chain:        # staged training: each stage starts from the previous one's weights
            options = {**t.get("model_options", {}), "stage": value}
            init = {"init_from": str(out / "runs" / previous / "model.pt")} if previous else {}
            trains[name] = from_mapping(TrainConfig, {**t, "out": str(out / "runs" / name), "model_options": options,
                                                      **init})
            previous = final = name
        evals[final] = from_mapping(EvalConfig, {**recipe.eval, "checkpoint": str(out / "runs" / final / "model.pt"),
                                                 "cache": str(out / "cache"),
                                                 "out": str(out / "runs" / final / "eval")})
    synth = synth_config(recipe.synth, recipe.path) if recipe.synth is not None else None
    return synth, crop, trains, evals


def run_recipe(recipe: Recipe, out: Path | None = None, force: bool = False, models: list[str] | None = None,
               progress: bool = True, console=None, jobs: int | None = None) -> RunResult:
    """Run every stage of `recipe` that is not up to date, then write the results table and summary.

    jobs: models trained at the same time (default: the recipe's [recipe] jobs)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    say = console.print
    out = Path(out) if out is not None else Path("out") / recipe.path.stem
    out.mkdir(parents=True, exist_ok=True)
    chosen = models or recipe.models
    unknown = [m for m in chosen if m not in recipe.models]
    if unknown:
        raise RecipeError(f"{recipe.path}: models {unknown} are not in the recipe's [model] names {recipe.models}")
    synth_cfg, crop_cfg, trains, evals = plan_configs(recipe, out)
    chosen = [run for run, cfg in trains.items() if cfg.model in chosen]    # every point of the chosen models
    atomic_write_text(out / "recipe.toml", recipe.path.read_text(encoding="utf-8"))
    atomic_write_text(out / "recipe-effective.json", json.dumps(recipe.raw, indent=1, default=str))  # with --set
    stages: dict[str, str] = {}
    t_start = time.perf_counter()

    upstream = ""
    if synth_cfg is not None:
        from posecrop import synth as S
        key = config_hash({"synth": to_dict(synth_cfg)})

        def do_synth(resume: bool) -> dict:
            return dataclasses.asdict(S.generate(synth_cfg, out / "data", progress=progress, overwrite=True))

        stages["synth"] = run_stage(out, Stage("synth", key, [out / "data" / S.INFO_FILE], do_synth,
                                               [out / "data"]), force, say)
        upstream = key

    crop_key = config_hash({"crop": {k: v for k, v in to_dict(crop_cfg).items() if k not in CROP_BOOKKEEPING},
                            "root": str(crop_cfg.root) if synth_cfg is None else "synth", "upstream": upstream})

    def do_crop(resume: bool) -> dict:
        from posecrop.crop_stage import run_crop
        summary = run_crop(dataclasses.replace(crop_cfg, progress=progress))
        if summary.written + summary.already_done == 0:
            raise RecipeError(f"crop stage wrote no rows into {crop_cfg.out} (see {crop_cfg.out}/crop_report.jsonl)")
        return summary.as_dict()

    stages["crop"] = run_stage(out, Stage("crop", crop_key, [out / "cache" / "train", out / "cache" / "query",
                                                              out / "cache" / "gallery"], do_crop, [out / "cache"]),
                               force, say)
    from reidtrain.resolve import resolve
    resolved = {m: resolve(trains[m]).cfg for m in trains}
    train_keys: dict[str, str] = {}
    for m in chosen:      # in plan order: a stage initialised from an earlier run folds in that run's key
        after = next((p for p in train_keys if trains[m].init_from is not None
                      and Path(trains[m].init_from) == out / "runs" / p / "model.pt"), None)
        train_keys[m] = config_hash({"train": result_config(resolved[m]), "epochs": resolved[m].epochs,
                                     "crop": crop_key, **({"after": train_keys[after]} if after else {})})
    train_stages = [(Stage(f"train/{m}", train_keys[m], [out / "runs" / m / "model.pt"], None, [out / "runs" / m]),
                     trains[m]) for m in chosen]
    jobs = 1 if recipe.stages else (jobs or recipe.info.jobs)      # the stages of a chain run in order
    stages.update(run_trainings(out, train_stages, force, jobs, progress, console, say))
    results: dict[str, dict] = {}
    for model in (run for run in chosen if run in evals):
        ecfg, run_dir = evals[model], out / "runs" / model
        eval_key = config_hash({"eval": {k: v for k, v in to_dict(ecfg).items() if k not in EVAL_BOOKKEEPING},
                                "train": train_keys[model]})

        def do_eval(resume: bool, ecfg=ecfg) -> dict:
            from reidtrain.evaluate import evaluate
            outcome = evaluate(ecfg, progress=progress, console=console)
            return {k: outcome.metrics.get(k) for k in ("R1", "R5", "R10", "R20", "mAP", "mINP")}

        stages[f"eval/{model}"] = run_stage(out, Stage(f"eval/{model}", eval_key, [run_dir / "eval" / "metrics.json"],
                                                       do_eval, [run_dir / "eval"]), force, say)
        results[model] = json.loads((run_dir / "eval" / "metrics.json").read_text())
    files = write_results(out, recipe, results)
    say(f"finished in {time.perf_counter() - t_start:.0f} s; results in {out / 'results.md'}, "
        f"summary {out / 'summary.html'}")
    return RunResult(out, results, stages, files)


# ------------------------------------------------------------------------------------------------- results


def write_results(out: Path, recipe: Recipe, results: Mapping[str, Mapping[str, Any]]) -> list[Path]:
    """results.json / results.md, a CMC plot of all models, the ranked lists side by side, summary page (with
    each model's first attention-map figure)."""
    import numpy as np

    from reidtrain.reports import RESULT_COLUMNS, plot_cmc, write_summary

    files = [out / "results.json", out / "results.md"]
    atomic_write_text(files[0], json.dumps({"recipe": recipe.name, "sweep": recipe.sweep, "models": results},
                                           indent=1, default=str))
    lines = [f"# {recipe.name}", "", recipe.info.description, "",
             "| model | " + " | ".join(RESULT_COLUMNS) + " | protocol | epochs |",
             "|---|" + "---:|" * len(RESULT_COLUMNS) + "---|---:|"]
    for model, m in results.items():
        cells = ["-" if m.get(c) is None else f"{m[c]:.2f}" for c in RESULT_COLUMNS]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {m.get('protocol', '')} | {m.get('epoch', '')} |")
    atomic_write_text(files[1], "\n".join(lines) + "\n")
    if not results:
        return files
    figures = [plot_cmc({k: {"cmc": np.asarray(v["cmc"]), "mAP": None if v.get("mAP") is None else v["mAP"] / 100}
                         for k, v in results.items()}, out / "cmc.png", title=f"CMC - {recipe.name}")]
    ranked = _ranked_side_by_side(out, results)
    if ranked is not None:
        figures.append(ranked)
    figures += [p for m in results for p in [out / "runs" / m / "eval" / "attention-0.png"] if p.is_file()]
    summary = write_summary(out, {k: {c: v.get(c) for c in RESULT_COLUMNS} for k, v in results.items()}, figures,
                            {"recipe": recipe.raw}, title=f"{recipe.name}: results")
    return files + figures + [summary, summary.with_suffix(".html")]


def _ranked_side_by_side(out: Path, results: Mapping[str, Mapping[str, Any]]) -> Path | None:
    """Fig. 6 across models: the same queries, each model's top-k (from its eval/ranked.json)."""
    from reidtrain.evaluate import RANKED_FILE, ranked_list_images
    from reidtrain.reports import plot_ranked_list

    lists = {}
    for model in results:
        path = out / "runs" / model / "eval" / RANKED_FILE
        if path.is_file():
            lists[model] = json.loads(path.read_text())
    if not lists:
        return None
    queries = next(iter(lists.values()))["queries"]
    lists = {m: r for m, r in lists.items() if r["queries"] == queries}
    if not queries:
        return None
    query_images, gallery, titles = ranked_list_images(out / "cache", lists)
    return plot_ranked_list(query_images, gallery, {m: r["correct"] for m, r in lists.items()}, out / "ranked_list.png",
                            titles=titles)

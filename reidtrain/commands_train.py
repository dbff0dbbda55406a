"""`python cli.py train | evaluate | extract | export` (torch loads inside the commands; `run` and `demo` are
pipelines.commands).

Configuration: defaults <- a TOML file (--config: its [train] / [eval] table or top-level keys; a recipe works)
<- the flags given. Multi-GPU / multi-node: `torchrun --nproc_per_node N cli.py train ...`.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .config import MODEL_CHOICES, AugmentConfig, EvalConfig, TrainConfig

_T, _E, _A = TrainConfig(), EvalConfig(), AugmentConfig()
EXIT_BAD_INPUT = 1


def _d(value) -> str:
    if value is None:
        return " (default: the model's)"
    if isinstance(value, tuple):
        value = "x".join(str(v) for v in value)
    return f" (default: {value})"


def _size(text: Optional[str], option: str) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected HEIGHTxWIDTH such as 384x192, got {text!r}", param_hint=option) from None
    return h, w


def _model_options(items: Optional[List[str]]) -> dict:
    """--model-option KEY=VALUE ... -> {KEY: VALUE}; VALUE read as TOML (numbers, true/false, "text"), else text."""
    import tomllib

    out: dict = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--model-option")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        out[key.strip()] = value
    return out


def _int_list(text: Optional[str], option: str) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated epochs such as 40,70, got {text!r}",
                                 param_hint=option) from None


def one_line(e: BaseException) -> str:
    from reidkit.errors import one_line as _one_line
    return _one_line(e)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    from rich.console import Console
    from rich.markup import escape
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _read_toml(path: Path) -> dict:
    import tomllib
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        _fail(f"{path}: config file not found")
    except IsADirectoryError:
        _fail(f"{path}: is a directory, not a TOML config file")
    except (OSError, UnicodeDecodeError) as e:
        _fail(f"{path}: cannot read the config file ({getattr(e, 'strerror', None) or e})")
    except tomllib.TOMLDecodeError as e:
        _fail(f"{path}: not valid TOML ({e})")


def _table_from(path: Optional[Path], table: str) -> dict:
    """The [table] of a TOML file, or its top-level keys when it has no such table."""
    if path is None:
        return {}
    data = _read_toml(path)
    if table in data:
        if not isinstance(data[table], dict):
            _fail(f"{path}: '{table}' must be a table, got {type(data[table]).__name__}")
        return dict(data[table])
    return {k: v for k, v in data.items() if not isinstance(v, dict) or k == "augment"}


def _train_table(path: Optional[Path], model_flag: Optional[str]) -> dict:
    """The TrainConfig keys of a --config file; for a recipe (it has a [train] table) also what `run` takes from
    its other tables: the input sizes of [crop] and the model of [model] names (one name, or --model)."""
    table = _table_from(path, "train")
    if path is None:
        return table
    data = _read_toml(path)
    if "train" not in data:
        return table
    section = data.get("model") if isinstance(data.get("model"), dict) else {}
    names = section.get("names")
    if names and "model" not in table and model_flag is None:
        if not isinstance(names, list) or len(names) != 1:
            _fail(f"{path}: [model] names {names!r} - several models; choose one with --model")
        table["model"] = names[0]
    chosen = model_flag or table.get("model") or TrainConfig().model
    crop = data.get("crop") if isinstance(data.get("crop"), dict) else {}
    if crop and _sizes_from_crop(chosen):
        for key in ("body_size", "part_size"):
            if key in crop and key not in table:
                table[key] = crop[key]
    if chosen and isinstance(section.get(chosen), dict) and "model_options" not in table:
        table["model_options"] = dict(section[chosen])       # the recipe's [model.NAME] table
    return table


def _sizes_from_crop(model: str) -> bool:
    """Whether a recipe's [crop] sizes are model `model`'s input sizes (its ModelDefaults.sizes_from_crop)."""
    from .model.registry import get_model
    return get_model(model).defaults.sizes_from_crop


def _expected_errors():
    """Errors printed as one line (exit 1): the project's (reidkit.errors.ReidError) and missing files. OSErrors of
    the disk (full, read-only) reach pipelines.app.main, which prints them as one line too."""
    from reidkit.errors import ReidError
    return (ReidError, FileNotFoundError)


def _trained_cache(checkpoint: Path) -> str:
    """The crop cache a model was trained on, from its checkpoint's metadata (default of --cache)."""
    from .checkpoint import CheckpointError, load_checkpoint
    from .evaluate import resolve_checkpoint
    path = resolve_checkpoint(checkpoint)
    cache = load_checkpoint(path).get("meta", {}).get("cache")
    if not cache:
        raise CheckpointError(f"{path}: records no training cache; pass --cache")
    return str(cache)


def register(app: typer.Typer) -> None:
    @app.command("train", help="Train a registered model on a crop cache (settings not given: the model's "
                               "defaults; the five-branch variants: Eq. 11 loss, SGD, lr step schedule of Sec. 4.1). "
                               "Checkpoint every epoch (RUN/checkpoints/last.pt, atomic); --resume continues a killed "
                               "run exactly. Multi-GPU: torchrun --nproc_per_node N cli.py train ...")
    def train_cmd(
        cache: Optional[Path] = typer.Option(None, "--cache", help="Crop cache folder (from `crop`)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Run folder: checkpoints, metrics.jsonl, tb/, model.pt."
                                           + _d(_T.out)),
        config: Optional[Path] = typer.Option(None, "--config", help="TOML file: its 'train' table (a recipe works) or "
                                              "top-level TrainConfig keys; flags override it."),
        model: Optional[str] = typer.Option(None, "--model", help=f"A registered model (`model-info --list`): the "
                                            f"five-branch variants {', '.join(MODEL_CHOICES)} and the comparison "
                                            f"models; plug-ins via $REIDTRAIN_MODELS." + _d(_T.model)),
        model_option: Optional[List[str]] = typer.Option(None, "--model-option", "-O", help="KEY=VALUE: an option "
                                                         "of the model (repeatable; `model-info --model NAME` "
                                                         "lists them)."),
        crops: Optional[str] = typer.Option(None, "--crops", help="'recrop' (cut the five crops from the cached "
                                            "source image and boxes in the loader) or 'stored' (decode the stored "
                                            "crops)." + _d(_T.crops)),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs." + _d(_T.epochs)),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per step and process."
                                                 + _d(_T.batch_size)),
        optimizer: Optional[str] = typer.Option(None, "--optimizer", help="'sgd', 'adam' or 'adamw' (default: the "
                                                "model's; SGD for the five-branch variants)."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Initial learning rate (default: the model's; 0.01 "
                                           "for the five-branch variants)."),
        weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Weight decay (default: the "
                                                     "model's)."),
        schedule: Optional[str] = typer.Option(None, "--schedule", help="'step', 'multistep' or 'cosine' (default: "
                                               "the model's)."),
        lr_step: Optional[int] = typer.Option(None, "--lr-step", help="step schedule: multiply the lr by --lr-gamma "
                                              "every this many epochs (five-branch default 40)."),
        lr_gamma: Optional[float] = typer.Option(None, "--lr-gamma", help="Factor of every lr step (default 0.1)."),
        milestones: Optional[str] = typer.Option(None, "--milestones", help="multistep schedule: epochs such as "
                                                 "40,70."),
        warmup_epochs: Optional[int] = typer.Option(None, "--warmup-epochs", help="Linear lr warm-up epochs (0 = "
                                                    "none)."),
        label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing", help="Label smoothing epsilon of "
                                                        "every cross-entropy (0 = plain)."),
        triplet_weight: Optional[float] = typer.Option(None, "--triplet-weight", help="Weight of the batch-hard "
                                                       "triplet loss (0 = off; use --sampler identity)."),
        triplet_margin: Optional[float] = typer.Option(None, "--triplet-margin", help="Margin of the triplet loss."),
        backbone_weights: Optional[Path] = typer.Option(None, "--backbone-weights", help="Local ImageNet state-dict "
                                                        "file (torchvision / timm keys) for the model's backbone."),
        lambda_intra: Optional[float] = typer.Option(None, "--lambda", help="Five-branch option lambda_intra: weight "
                                                     "of the five intra losses in Eq. 11 (default 0.5)."),
        body_size: Optional[str] = typer.Option(None, "--body-size", help="Whole-body input HEIGHTxWIDTH."
                                                + _d(_T.body_size)),
        part_size: Optional[str] = typer.Option(None, "--part-size", help="Body-part input HEIGHTxWIDTH."
                                                + _d(_T.part_size)),
        sampler: Optional[str] = typer.Option(None, "--sampler", help="'random' or 'identity' (P x K batches)."
                                              + _d(_T.sampler)),
        instances_per_id: Optional[int] = typer.Option(None, "--instances-per-id", help="K of the identity sampler."
                                                       + _d(_T.instances_per_id)),
        normalize: Optional[str] = typer.Option(None, "--normalize", help="'channel-mean' (every crop minus the "
                                                "channel means of the sample's whole-body image, Sec. 4.1) or "
                                                "'imagenet'." + _d(_T.normalize)),
        attention_norm: Optional[bool] = typer.Option(None, "--attention-norm/--no-attention-norm",
                                                      help="Batch norm of the intra-attention mask logits (off: the "
                                                      "paper's sigmoid(conv(S*C)) as written, which saturates; "
                                                      "five-branch option attention_norm, default on)."),
        flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Random horizontal flip (one decision for "
                                            "all five crops)." + _d(_A.flip)),
        pad: Optional[int] = typer.Option(None, "--pad", help="Padding-crop pixels (0 = off)." + _d(_A.pad)),
        erasing: Optional[float] = typer.Option(None, "--erasing", help="Random-erasing probability (0 = off)."
                                                + _d(_A.erasing)),
        workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader worker processes." + _d(_T.workers)),
        threads: Optional[int] = typer.Option(None, "--threads", help="torch intra-op threads (0 = automatic: "
                                              "torch's default lowered to the free cores, see reidtrain/threads.py)."
                                              + _d(_T.threads)),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed of initialisation, data order, augmentation."
                                           + _d(_T.seed)),
        device: Optional[str] = typer.Option(None, "--device", help="'auto', 'cpu', 'cuda', 'cuda:1'." + _d(_T.device)),
        amp: Optional[str] = typer.Option(None, "--amp", help="'auto' (bf16/fp16 on CUDA, off on CPU), 'off', 'bf16', "
                                          "'fp16'." + _d(_T.amp)),
        channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                     help="channels_last memory format (faster convs on GPUs)."
                                                     + _d(_T.channels_last)),
        init_from: Optional[Path] = typer.Option(None, "--init-from", help="Initialise from this checkpoint (tensors "
                                                 "matching by name and shape; the rest is reported)."),
        keep_every: Optional[int] = typer.Option(None, "--keep-every", help="Also keep checkpoints/epoch-NNN.pt every "
                                                 "N epochs (0 = only last.pt)." + _d(_T.keep_every)),
        tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard",
                                                   help="Write TensorBoard scalars to RUN/tb." + _d(_T.tensorboard)),
        resume: bool = typer.Option(False, "--resume", help="Continue from RUN/checkpoints/last.pt (restarts the "
                                    "epoch a kill interrupted; same settings required)."),
        force: bool = typer.Option(False, "--force", help="Replace the run already in --out: its model.pt, "
                                   "checkpoints, metrics, tb/ and eval/ are removed first. Without --resume or "
                                   "--force an existing run is refused."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        from reidkit.typedconfig import from_mapping, merge

        if resume and force:
            raise typer.BadParameter("--resume continues the run in --out, --force replaces it: give one",
                                     param_hint="--force")

        errors = _expected_errors()
        try:
            base = from_mapping(TrainConfig, _train_table(config, model))
            aug = merge(base.augment, {"flip": flip, "pad": pad, "erasing": erasing})
            options = {**base.model_options, **_model_options(model_option)}
            cfg = merge(base, {"cache": cache, "out": out, "model": model, "crops": crops, "epochs": epochs,
                               "batch_size": batch_size, "model_options": options or None,
                               "optimizer": optimizer, "weight_decay": weight_decay, "schedule": schedule,
                               "lr_gamma": lr_gamma, "milestones": _int_list(milestones, "--milestones"),
                               "warmup_epochs": warmup_epochs, "label_smoothing": label_smoothing,
                               "triplet_weight": triplet_weight, "triplet_margin": triplet_margin,
                               "backbone_weights": backbone_weights,
                               "lr": lr, "lr_step": lr_step, "lambda_intra": lambda_intra,
                               "body_size": _size(body_size, "--body-size"), "augment": aug,
                               "part_size": _size(part_size, "--part-size"), "sampler": sampler,
                               "instances_per_id": instances_per_id, "normalize": normalize,
                               "attention_norm": attention_norm, "workers": workers,
                               "threads": threads, "seed": seed, "device": device, "amp": amp,
                               "channels_last": channels_last,
                               "init_from": init_from, "keep_every": keep_every, "tensorboard": tensorboard})
            if cfg.cache is None:
                _fail("--cache is required (or `cache` in the --config file)")
            from .train import train
            result = train(cfg, resume=resume, progress=progress, force=force)
        except errors as e:
            _fail(one_line(e), getattr(e, "exit_code", EXIT_BAD_INPUT))
        except KeyboardInterrupt:
            last = Path(cfg.out) / "checkpoints" / "last.pt" if "cfg" in locals() and cfg is not None else None
            if last is not None and last.is_file():
                _fail(f"interrupted; finished epochs are in {last} - continue with --resume")
            _fail("interrupted before the first epoch finished; nothing to resume - run the same command again")
        if result.rank == 0:
            typer.echo(f"trained {cfg.model} for {result.epochs_done} epochs: {result.final}")

    @app.command("evaluate", help="CMC rank-1/5/10/20, mAP and mINP of a trained model on the query/gallery splits "
                                  "(Market/Duke protocol, CUHK03 classic single-gallery-shot or CUHK01 single-shot "
                                  "with seeded repeats); writes metrics.json, cmc.png, ranked_list.png, "
                                  "attention-N.png, summary.md/html.")
    def evaluate_cmd(
        checkpoint: Path = typer.Argument(..., help="model.pt / last.pt, or a training run folder."),
        cache: Optional[Path] = typer.Option(None, "--cache", help="Crop cache (default: the one it was trained on)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: RUN/eval)."),
        config: Optional[Path] = typer.Option(None, "--config", help="TOML file: its 'eval' table or top-level keys."),
        distance: Optional[str] = typer.Option(None, "--distance", help="'euclidean' or 'cosine'." + _d(_E.distance)),
        rerank: Optional[bool] = typer.Option(None, "--rerank/--no-rerank", help="k-reciprocal re-ranking (not used "
                                              "in the paper)." + _d(_E.rerank)),
        rerank_convention: Optional[str] = typer.Option(
            None, "--rerank-convention", help="'zhong' (re-rank squared Euclidean distances, as Zhong et al.) or "
            "'torchreid' (torchreid's re_ranking numbers: it squares the squared distances it is given)."
            + _d(_E.rerank_convention)),
        flip_average: Optional[bool] = typer.Option(None, "--flip-average/--no-flip-average",
                                                    help="Average features with the mirrored inputs'."
                                                    + _d(_E.flip_average)),
        protocol: Optional[str] = typer.Option(None, "--protocol", help="'auto' (from the dataset), 'market', "
                                               "'cuhk03-classic', 'cuhk01-single-shot', 'cuhk01-multi-shot' or "
                                               "'cuhk01-multi-query'." + _d(_E.protocol)),
        repeats: Optional[int] = typer.Option(None, "--repeats", help="CUHK03 classic / CUHK01 single-shot: "
                                              "samplings averaged." + _d(_E.repeats)),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the CUHK03 / CUHK01 samplings." + _d(_E.seed)),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per forward." + _d(_E.batch_size)),
        workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers." + _d(_E.workers)),
        threads: Optional[int] = typer.Option(None, "--threads", help="torch intra-op threads (0 = automatic, as "
                                              "train)." + _d(_E.threads)),
        device: Optional[str] = typer.Option(None, "--device", help="'auto', 'cpu', 'cuda'." + _d(_E.device)),
        ranked_queries: Optional[int] = typer.Option(None, "--ranked-queries", help="Queries in ranked_list.png."
                                                     + _d(_E.ranked_queries)),
        topk: Optional[int] = typer.Option(None, "--topk", help="Gallery images per query in ranked_list.png."
                                           + _d(_E.topk)),
        reports: Optional[bool] = typer.Option(None, "--reports/--no-reports", help="Write the PNG reports and the "
                                               "summary page." + _d(_E.reports)),
        branches: Optional[bool] = typer.Option(None, "--branches/--no-branches", help="Also score each branch's "
                                                "feature alone (global, head, upper body, upper leg, lower leg), "
                                                "the part fusion E_l and [E_g, E_l] (Table 7): metrics.json "
                                                "'branches', branches.md." + _d(_E.branches)),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        from rich.console import Console

        from reidkit.typedconfig import from_mapping, merge

        errors = _expected_errors()
        try:
            cfg = merge(from_mapping(EvalConfig, _table_from(config, "eval")), {
                "checkpoint": checkpoint, "cache": cache, "out": out, "distance": distance, "rerank": rerank,
                "rerank_convention": rerank_convention, "flip_average": flip_average, "protocol": protocol,
                "repeats": repeats, "seed": seed,
                "batch_size": batch_size, "workers": workers, "threads": threads, "device": device,
                "ranked_queries": ranked_queries,
                "topk": topk, "reports": reports, "branches": branches})
            from .evaluate import evaluate
            if cfg.cache is None:
                cfg = merge(cfg, {"cache": _trained_cache(checkpoint)})
            outcome = evaluate(cfg, progress=progress)
        except errors as e:
            _fail(one_line(e), getattr(e, "exit_code", EXIT_BAD_INPUT))
        from .reports import results_table
        console = Console()
        console.print(results_table(f"{outcome.metrics['dataset']}", {outcome.metrics["model"]: outcome.metrics}))
        if outcome.metrics.get("branches"):
            m = outcome.metrics
            console.print(results_table(f"{m['model']}: each feature alone", {
                label: {**b, "protocol": m["protocol"], "epoch": m["epoch"]} for label, b in m["branches"].items()}))
        console.print(f"reports in {outcome.out}")

    @app.command("extract", help="Features [E_g, E_l] of cache splits to one Parquet file (image_id, pid, camid, "
                                 "split, feature).")
    def extract_cmd(
        checkpoint: Path = typer.Argument(..., help="model.pt / last.pt, or a training run folder."),
        out: Path = typer.Option(..., "--out", help="Features Parquet file to write (atomic)."),
        cache: Optional[Path] = typer.Option(None, "--cache", help="Crop cache (default: the one it was trained on)."),
        splits: str = typer.Option("query,gallery", "--splits", help="Comma-separated splits to extract."),
        flip_average: bool = typer.Option(False, "--flip-average/--no-flip-average",
                                          help="Average with the features of the mirrored inputs."),
        batch_size: int = typer.Option(64, "--batch-size", help="Images per forward."),
        workers: int = typer.Option(2, "--workers", help="DataLoader workers."),
        device: str = typer.Option("auto", "--device", help="'auto', 'cpu', 'cuda'."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        from posecrop.records import SPLITS
        names = [s.strip() for s in splits.split(",") if s.strip()]
        bad = [s for s in names if s not in SPLITS]
        if bad or not names:
            raise typer.BadParameter(f"splits must be among {', '.join(SPLITS)}, got {splits!r}", param_hint="--splits")
        errors = _expected_errors()
        try:
            from .export import extract_to_parquet, read_features
            if cache is None:
                cache = Path(_trained_cache(checkpoint))
            path = extract_to_parquet(checkpoint, cache, out, names, flip_average, batch_size, workers, device,
                                      progress)
            table, feats, _ = read_features(path)
        except errors as e:
            _fail(one_line(e), getattr(e, "exit_code", EXIT_BAD_INPUT))
        typer.echo(f"wrote {table.num_rows} features of dimension {feats.shape[1]} to {path}")

    @app.command("export", help="Export a trained model to ONNX (inputs: RGB in [0,1] per input crop, NCHW, dynamic "
                                "batch; output: features), checked with onnx.checker and against PyTorch.")
    def export_cmd(
        checkpoint: Path = typer.Argument(..., help="model.pt / last.pt, or a training run folder."),
        out: Path = typer.Option(..., "--out", help="ONNX file to write (atomic)."),
        opset: int = typer.Option(17, "--opset", help="ONNX opset version (torchscript exporter: 7-20, dynamo: "
                                  "18 and up; 'auto' falling back to dynamo writes at least 18)."),
        exporter: str = typer.Option("auto", "--exporter", help="'torchscript' (seconds), 'dynamo' (torch.export "
                                     "based, slower) or 'auto' (torchscript, dynamo where tracing fails)."),
        verify: bool = typer.Option(True, "--verify/--no-verify", help="Run the graph once and compare with PyTorch."),
    ) -> None:
        errors = _expected_errors()
        try:
            from .export import export_onnx
            info = export_onnx(checkpoint, out, opset, exporter, verify)
        except errors + (ValueError,) as e:
            _fail(one_line(e), getattr(e, "exit_code", EXIT_BAD_INPUT))
        dev = info["max_rel_deviation"]
        typer.echo(f"wrote {info['path']} ({info['exporter']} exporter, opset {info['opset']}): "
                   f"inputs {info['inputs']}, "
                   f"output features "
                   f"({info['feature_dim']})"
                   + (f"; max relative deviation from PyTorch {dev:.1e}" if dev is not None else ""))

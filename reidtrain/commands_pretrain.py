"""`python cli.py pretrain`: ImageNet (ILSVRC2012) pre-training of the five-branch network (reidtrain.pretrain).

Configuration: defaults <- a TOML file (--config: its [pretrain] table or top-level keys) <- the flags given.
Multi-GPU: `torchrun --nproc_per_node N cli.py pretrain ROOT ...`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .commands_train import _d, _expected_errors, _fail, _size, _table_from, one_line
from .config import MODEL_CHOICES
from .pretrain_config import PretrainConfig

_P = PretrainConfig()

EXIT_BAD_INPUT = 1


def register(app: typer.Typer) -> None:
    @app.command("pretrain", help="ImageNet pre-training of the five-branch network (Sec. 4.1: 9 epochs, lr 0.01 "
                                  "/10 every 3, batch 32, SGD): ILSVRC2012 folder train/<wnid>/*.JPEG + val/ (class "
                                  "folders or LOC_val_solution.csv); whole image to the global branch, four "
                                  "horizontal strips to the part branches, Eq. 11 loss; top-1/top-5 on val every "
                                  "epoch; RUN/model.pt (classifiers dropped) is what `train --init-from` takes. "
                                  "Resumable; multi-GPU: torchrun --nproc_per_node N cli.py pretrain ...")
    def pretrain_cmd(
        root: Optional[Path] = typer.Argument(None, help="ImageNet folder holding train/ and val/."),
        out: Optional[Path] = typer.Option(None, "--out", help="Run folder." + _d(_P.out)),
        config: Optional[Path] = typer.Option(None, "--config", help="TOML file: its 'pretrain' table or top-level "
                                              "keys."),
        model: Optional[str] = typer.Option(None, "--model", help=f"Variant to pre-train: {', '.join(MODEL_CHOICES)}."
                                            + _d(_P.model)),
        branch_inputs: Optional[str] = typer.Option(None, "--branch-inputs", help="'strips': whole image to the "
                                                    "global branch, its four horizontal strips to the part branches; "
                                                    "'whole': the whole image to every branch."
                                                    + _d(_P.branch_inputs)),
        input_size: Optional[str] = typer.Option(None, "--input-size", help="HEIGHTxWIDTH of the whole image; the "
                                                 "strips are HEIGHT/4 x WIDTH (384x192 is the paper's body size, "
                                                 "its strips the part size 96x192)." + _d(_P.input_size)),
        val_labels: Optional[Path] = typer.Option(None, "--val-labels", help="LOC_val_solution.csv for a flat val/ "
                                                  "(default: looked up in ROOT, ROOT/val, beside ROOT's parents)."),
        validate: Optional[bool] = typer.Option(None, "--val/--no-val", help="Top-1/top-5 on val/ after every "
                                                "epoch." + _d(_P.validate)),
        augment: Optional[str] = typer.Option(None, "--augment", help="'random-resized-crop' or 'resize-crop'."
                                              + _d(_P.augment)),
        scale_min: Optional[float] = typer.Option(None, "--scale-min", help="Smallest area share of a random-resized "
                                                  "crop." + _d(_P.scale_min)),
        flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Random horizontal flip." + _d(_P.flip)),
        reduced_decoding: Optional[bool] = typer.Option(None, "--reduced-decoding/--no-reduced-decoding",
                                                        help="Decode large JPEGs at 1/2-1/8 size when the crop allows "
                                                        "(PIL draft mode)." + _d(_P.reduced_decoding)),
        lambda_intra: Optional[float] = typer.Option(None, "--lambda-intra", help="lambda of Eq. 11."
                                                     + _d(_P.lambda_intra)),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs." + _d(_P.epochs)),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per step and process."
                                                 + _d(_P.batch_size)),
        lr: Optional[float] = typer.Option(None, "--lr", help="Initial learning rate." + _d(_P.lr)),
        lr_step: Optional[int] = typer.Option(None, "--lr-step", help="Epochs between lr divisions by 10."
                                              + _d(_P.lr_step)),
        momentum: Optional[float] = typer.Option(None, "--momentum", help="SGD momentum." + _d(_P.momentum)),
        weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="SGD weight decay."
                                                     + _d(_P.weight_decay)),
        normalize: Optional[str] = typer.Option(None, "--normalize", help="'channel-mean' (Sec. 4.1) or 'imagenet'; "
                                                "keep the fine-tuning run's." + _d(_P.normalize)),
        workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers." + _d(_P.workers)),
        threads: Optional[int] = typer.Option(None, "--threads", help="torch intra-op threads (0 = automatic)."
                                              + _d(_P.threads)),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the data order and augmentation."
                                           + _d(_P.seed)),
        device: Optional[str] = typer.Option(None, "--device", help="'auto', 'cpu', 'cuda', 'cuda:N'." + _d(_P.device)),
        amp: Optional[str] = typer.Option(None, "--amp", help="'auto' (bf16/fp16 on CUDA), 'off', 'bf16', 'fp16'."
                                          + _d(_P.amp)),
        channels_last: Optional[str] = typer.Option(None, "--channels-last", help="'auto' (on CUDA), 'on', 'off'."
                                                    + _d(_P.channels_last)),
        tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard", help="RUN/tb/ scalars."
                                                   + _d(_P.tensorboard)),
        resume: bool = typer.Option(False, "--resume", help="Continue from RUN/checkpoints/last.pt."),
        force: bool = typer.Option(False, "--force", help="Replace the run in --out (its outputs removed first)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        from reidkit.typedconfig import from_mapping, merge

        errors = _expected_errors()
        result = None
        try:
            from .pretrain import pretrain
            cfg = merge(from_mapping(PretrainConfig, _table_from(config, "pretrain")), {
                "root": root, "out": out, "model": model, "branch_inputs": branch_inputs,
                "input_size": _size(input_size, "--input-size"), "val_labels": val_labels, "validate": validate,
                "augment": augment, "scale_min": scale_min, "flip": flip, "reduced_decoding": reduced_decoding,
                "lambda_intra": lambda_intra, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "lr_step": lr_step, "momentum": momentum, "weight_decay": weight_decay, "normalize": normalize,
                "workers": workers, "threads": threads, "seed": seed, "device": device, "amp": amp,
                "channels_last": channels_last, "tensorboard": tensorboard})
            if cfg.root is None:
                _fail("no ImageNet folder: pass ROOT (holding train/ and val/) or set 'root' in --config")
            result = pretrain(cfg, resume=resume, force=force, progress=progress)
        except errors as e:
            _fail(one_line(e), getattr(e, "exit_code", EXIT_BAD_INPUT))
        except KeyboardInterrupt:
            last = Path(cfg.out) / "checkpoints" / "last.pt" if "cfg" in locals() else None
            if last is not None and last.is_file():
                _fail(f"interrupted; finished epochs are in {last} - continue with --resume")
            _fail("interrupted before the first epoch finished; nothing to resume - run the same command again")
        if result is not None and result.rank == 0:
            last = result.history[-1] if result.history else {}
            val = (f", val top-1 {last['val_top1']:.3f} / top-5 {last['val_top5']:.3f}" if "val_top1" in last else "")
            typer.echo(f"pre-trained {cfg.model} for {result.epochs_done} epochs{val}: {result.final} "
                       f"(train --model {cfg.model} --init-from {result.final})")

"""posecrop-reid command line: `python cli.py --help`.

Each stage registers its own commands (see the `register` function of each `*/commands*.py` module);
heavy imports happen inside the commands so that `--help` stays fast.
"""
from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="posecrop-reid",
    help="Pose-aligned, attention-driven person re-identification: pose crops -> Parquet cache -> five-branch attention network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

COMMAND_MODULES = (
    "posecrop.commands_data",     # synth
    "posecrop.commands_crop",     # crop, info, show
    "posecrop.commands_canonical",  # canonical fit, canonical eval
    "reidtrain.commands_model",   # model-info
    "reidtrain.commands_train",   # train, evaluate, extract, export, run, demo
    "benchmarks.commands",        # bench
)

for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as _e:  # a stage not yet built
        if _e.name != _name:
            raise
        continue
    _module.register(app)

if __name__ == "__main__":
    app()

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
    "reidtrain.commands_pretrain",  # pretrain (ImageNet)
    "reidtrain.commands_compare",  # compare (the comparison table of a recipe run)
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


def main() -> None:
    """Run the app; the project's errors (posecrop.errors.ReidError) and OSErrors of the disk or file system (full,
    read-only, permissions) become one line on stderr and exit code 1. Anything else is a bug: its traceback stays."""
    import sys

    from posecrop.errors import ReidError, is_environment_error, one_line

    try:
        app()
    except Exception as e:
        if not (isinstance(e, ReidError) or is_environment_error(e)):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 1))


if __name__ == "__main__":
    main()

"""The posecrop-reid command line: `posecrop-reid --help` when installed, `python cli.py --help` in a checkout.

Each stage registers its own commands (see the `register` function of each `*/commands*.py` module);
heavy imports happen inside the commands so that `--help` stays fast. A command module whose package is not
installed (the benchmarks live in the checkout only) is left out.
"""
from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="posecrop-reid",
    help="Pose-aligned, attention-driven person re-identification: pose crops -> Parquet cache -> five-branch "
         "attention network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

COMMAND_MODULES = (
    "posecrop.commands_data",     # synth
    "posecrop.commands_crop",     # crop, info, show
    "posecrop.commands_canonical",  # canonical fit, canonical eval
    "reidtrain.commands_model",   # model-info
    "reidtrain.commands_train",   # train, evaluate, extract, export
    "reidtrain.commands_pretrain",  # pretrain (ImageNet)
    "reidtrain.commands_report",  # report (the paper's Tables 6-11 beside ours)
    "reidtrain.commands_compare",  # compare (the comparison table of a recipe run)
    "pipelines.commands",         # run, demo
    "benchmarks.commands",        # bench (a checkout only: the wheel does not install the benchmarks)
)


def _missing(name: str, error: ModuleNotFoundError) -> bool:
    """Whether `error` says that module `name` (or a package above it) is not there, not one of its imports."""
    return error.name is not None and (name == error.name or name.startswith(error.name + "."))


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as _e:  # a stage not yet built, or the benchmarks of a checkout
        if not _missing(_name, _e):
            raise
        continue
    _module.register(app)


def main() -> None:
    """Run the app; the project's errors (reidkit.errors.ReidError) and OSErrors of the disk or file system (full,
    read-only, permissions) become one line on stderr and exit code 1. Anything else is a bug: its traceback stays."""
    import sys

    from reidkit.errors import ReidError, is_environment_error, one_line

    try:
        app()
    except Exception as e:
        if not (isinstance(e, ReidError) or is_environment_error(e)):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 1))


if __name__ == "__main__":
    main()

"""`python cli.py model-info`: parameters and multiply-accumulates of any registered model, against its paper.

Read from the registry (reidtrain.model.registry): the model's default input sizes, its options and the
parameter / MAC figures its own paper reports (the five-branch variants: Table 12 of the paper).
"""
from __future__ import annotations

from typing import Optional

import typer

PARAMS_TOLERANCE, MACS_TOLERANCE = 0.10, 0.15
"""Accepted relative deviation from a paper's parameter / MAC count (the project's acceptance ranges)."""


def parse_size(text: str, option: str) -> tuple[int, int]:
    """'384x192' -> (384, 192) as (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected HEIGHTxWIDTH such as 384x192, got {text!r}", param_hint=option) from None
    if h < 1 or w < 1:
        raise typer.BadParameter(f"sizes must be positive, got {text!r}", param_hint=option)
    return h, w


def _sizes_text(inputs) -> str:
    """'384x192 + 4 x 96x192': the input sizes, repeated sizes counted."""
    counts: dict[str, int] = {}
    for spec in inputs.values():
        key = f"{spec.size[0]}x{spec.size[1]}"
        counts[key] = counts.get(key, 0) + 1
    return " + ".join(k if n == 1 else f"{n} x {k}" for k, n in counts.items())


def register(app: typer.Typer) -> None:
    @app.command("model-info", help="Parameters (with / without classifiers) and multiply-accumulates for one "
                                    "sample of a registered model, per part of the network, compared with the "
                                    "figures of its own paper (five-branch variants: Table 12).")
    def model_info(
        model: str = typer.Option("intra-inter", "--model", help="A registered model, or 'all'."),
        list_only: bool = typer.Option(False, "--list", help="List the registered models with their options."),
        body_size: Optional[str] = typer.Option(None, "--body-size", help="Inputs of the body size group "
                                                "HEIGHTxWIDTH (default: the model's)."),
        part_size: Optional[str] = typer.Option(None, "--part-size", help="Inputs of the part size group "
                                                "HEIGHTxWIDTH (default: the model's)."),
        num_classes: int = typer.Option(751, "--num-classes", min=0,
                                        help="Identities of the classifiers (751: Market-1501 train)."),
    ) -> None:
        from rich.console import Console
        from rich.table import Table

        from reidtrain.model.complexity import count
        from reidtrain.model.registry import build_model, get_model, list_models

        console = Console()
        names = list_models()
        if list_only:
            table = Table(title="registered models")
            for col in ("model", "inputs (column, size)", "options", "summary"):
                table.add_column(col)
            for name in names:
                entry = get_model(name)
                columns = sorted({s.column for s in entry.defaults.inputs.values()},
                                 key=[s.column for s in entry.defaults.inputs.values()].index)
                inputs = f"{', '.join(columns) if len(columns) < 3 else f'{len(columns)} crops'}; " \
                         f"{_sizes_text(entry.defaults.inputs)}"
                table.add_row(name, inputs, ", ".join(entry.option_names()) or "-", entry.summary)
            console.print(table)
            return
        chosen = names if model == "all" else [model]
        if any(n not in names for n in chosen):
            raise typer.BadParameter(f"unknown model {model!r}; choose one of {', '.join(names)} or 'all'",
                                     param_hint="--model")
        body = parse_size(body_size, "--body-size") if body_size else None
        part = parse_size(part_size, "--part-size") if part_size else None
        summary = Table(title=f"model size for one sample ({num_classes} classes)")
        for col in ("model", "params M", "w/o cls M", "GMACs", "paper", "Δ params", "Δ MACs"):
            summary.add_column(col, justify="left" if col in ("model", "paper") else "right", no_wrap=True)
        inputs_lines = []
        for name in chosen:
            entry = get_model(name)
            net = build_model(name, num_classes, body, part)
            r = count(net, net.example_inputs(1), group_of=net.complexity_group)
            default_sizes = all(tuple(net.inputs[k].size) == tuple(s.size) for k, s in entry.defaults.inputs.items())
            paper = entry.paper

            def delta(ours: float, ref: float | None, tol: float, comparable: bool = True) -> str:
                if ref is None:
                    return "-"
                if not comparable:
                    return "n/a"
                d = ours / ref - 1
                return f"[{'green' if abs(d) <= tol else 'red'}]{d:+.1%}[/]"

            ref_text = "-"
            if paper is not None:
                bits = [f"{paper.params_m:.1f}M" if paper.params_m else None,
                        f"{paper.macs_g:.2f}G" if paper.macs_g else None]
                ref_text = "/".join(b for b in bits if b) or "-"
            inputs_lines.append(f"{name}: inputs {_sizes_text(net.inputs)}")
            summary.add_row(name, f"{r.params_total / 1e6:.3f}",
                            f"{r.params_without_classifiers / 1e6:.3f}", f"{r.macs / 1e9:.3f}", ref_text,
                            delta(r.params_without_classifiers, paper.params_m * 1e6 if paper and paper.params_m
                                  else None, PARAMS_TOLERANCE),
                            delta(r.macs, paper.macs_g * 1e9 if paper and paper.macs_g else None, MACS_TOLERANCE,
                                  default_sizes))
            if len(chosen) == 1:
                groups = Table(title=f"{name}: per part of the network (classifiers excluded)")
                for col in ("group", "params (M)", "GMACs"):
                    groups.add_column(col, justify="left" if col == "group" else "right")
                for g, v in r.per_group.items():
                    groups.add_row(g, f"{v['params'] / 1e6:.3f}", f"{v['macs'] / 1e9:.4f}")
                console.print(groups)
                if entry.options is not None:
                    console.print(f"options of {name}: " + ", ".join(
                        f"{k}={v!r}" for k, v in vars(entry.parse_options({})).items()))
                if paper is not None:
                    console.print(f"paper: {paper.source}" + (f" - {paper.note}" if paper.note else ""))
        console.print(summary)
        console.print("; ".join(inputs_lines))
        console.print("params: all / without the identity classifiers (each parameter counted once, shared "
                      "modules too); GMACs: per sample, classifiers excluded; paper: the figures the model's own "
                      "paper reports (five-branch variants: Table 12, 'Full model' with intra-attention, else "
                      "'Basemodel'); Δ: deviation from it (n/a: MACs only comparable at the model's default "
                      "input sizes).")
        console.print("MACs: multiply-accumulates of convolutions and linear layers (batch norm, pooling, "
                      f"activations and element-wise products not counted), the convention that reproduces "
                      f"Table 12's ResNet-50 row; tolerance ±{PARAMS_TOLERANCE:.0%} parameters, "
                      f"±{MACS_TOLERANCE:.0%} MACs.")

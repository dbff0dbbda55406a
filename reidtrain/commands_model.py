"""`python cli.py model-info`: parameters and multiply-accumulates of the five-branch network (Table 12)."""
from __future__ import annotations

import typer

MODEL_CHOICES = ("baseline", "aligned", "intra", "inter", "intra-inter")  # = reidtrain.model.MODEL_NAMES


def parse_size(text: str, option: str) -> tuple[int, int]:
    """'384x192' -> (384, 192) as (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected HEIGHTxWIDTH such as 384x192, got {text!r}", param_hint=option) from None
    if h < 1 or w < 1:
        raise typer.BadParameter(f"sizes must be positive, got {text!r}", param_hint=option)
    return h, w


def register(app: typer.Typer) -> None:
    @app.command("model-info", help="Parameters (with / without classifiers) and multiply-accumulates for one "
                                    "sample, per branch, compared with Table 12 of the paper.")
    def model_info(
        model: str = typer.Option("intra-inter", "--model", help=f"Variant: {', '.join(MODEL_CHOICES)} or 'all'."),
        body_size: str = typer.Option("384x192", "--body-size", help="Whole-body input HEIGHTxWIDTH."),
        part_size: str = typer.Option("96x192", "--part-size", help="Body-part input HEIGHTxWIDTH."),
        num_classes: int = typer.Option(751, "--num-classes", min=0,
                                        help="Identities of the classifiers (751: Market-1501 train)."),
    ) -> None:
        names = MODEL_CHOICES if model == "all" else (model,)
        if any(n not in MODEL_CHOICES for n in names):
            raise typer.BadParameter(f"unknown model {model!r}; choose one of {', '.join(MODEL_CHOICES)} or 'all'",
                                     param_hint="--model")
        body, part = parse_size(body_size, "--body-size"), parse_size(part_size, "--part-size")

        from rich.console import Console
        from rich.table import Table

        from reidtrain.model.complexity import TABLE12, TABLE12_TOLERANCE, model_report, table12_row

        console = Console()
        summary = Table(title=f"model size for one sample (body {body[0]}x{body[1]}, parts {part[0]}x{part[1]}, "
                              f"{num_classes} classes)")
        for col in ("model", "params M", "w/o cls M", "GMACs", "Table 12", "Δ params", "Δ MACs"):
            summary.add_column(col, justify="left" if col in ("model", "Table 12") else "right", no_wrap=True)
        for name in names:
            r = model_report(name, num_classes, body, part)
            row = table12_row(name)
            ref = TABLE12[row]
            dp, dm = r.params_without_classifiers / ref["params"] - 1, r.macs / ref["macs"] - 1
            paper_sizes = body == (384, 192) and part == (96, 192)

            def fmt(d: float, key: str) -> str:
                if not paper_sizes and key == "macs":
                    return "n/a"
                style = "green" if abs(d) <= TABLE12_TOLERANCE[key] else "red"
                return f"[{style}]{d:+.1%}[/]"

            summary.add_row(name, f"{r.params_total / 1e6:.3f}", f"{r.params_without_classifiers / 1e6:.3f}",
                            f"{r.macs / 1e9:.3f}", f"{ref['params'] / 1e6:.1f}M/{ref['macs'] / 1e9:.2f}G",
                            fmt(dp, "params"), fmt(dm, "macs"))
            if len(names) == 1:
                groups = Table(title=f"{name}: per part of the network (classifiers excluded)")
                for col in ("group", "params (M)", "GMACs"):
                    groups.add_column(col, justify="left" if col == "group" else "right")
                for g, v in r.per_group.items():
                    groups.add_row(g, f"{v['params'] / 1e6:.3f}", f"{v['macs'] / 1e9:.4f}")
                console.print(groups)
        console.print(summary)
        console.print("params: all / without the identity classifiers; GMACs: per sample, classifiers excluded; "
                      "Table 12: its 'Full model' row for variants with intra-attention, else 'Basemodel'; "
                      "Δ: deviation from it (n/a: MACs only comparable at 384x192 / 96x192).")
        console.print("MACs: multiply-accumulates of convolutions and linear layers (batch norm, pooling, "
                      "activations and element-wise products not counted), the convention that reproduces "
                      "Table 12's ResNet-50 row; tolerance ±10 % parameters, ±15 % MACs.")

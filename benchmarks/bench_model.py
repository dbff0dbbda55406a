"""Training throughput of the full model (`intra-inter`) against the ResNet-50 baseline at 384x192, same run.

Both models come from the registry and take the training loop's own step (reidtrain.train): forward,
`model.loss` (intra-inter: Eq. 11; resnet50: label-smoothed cross-entropy + batch-hard triplet on its BNNeck),
`sum_terms`, backward, SGD step - on random images and P x K labels (4 images per identity; the loader is
measured by bench_loader). The reference is the registered `resnet50` with last stride 2 (torchvision's
ResNet-50, the network of Table 12's row); `--reference strong` takes the strong baseline's last stride 1
(4x the conv5 positions: 9.1 G MACs at 384x192). Table 12's sizes (2.69 G vs 5.58 G MACs per sample) imply the
five-branch model trains about 2x faster than ResNet-50; `ratio` = our images/s ÷ the reference's (higher is
better).

Steps of the two models are interleaved (ours, ResNet, ours, ...) and the fastest step of each is taken, so that
load from other processes on a shared machine hits both alike and only adds time.

Options, each measured for both models: `eager` (fp32, contiguous), `channels_last` memory format, `bf16`
autocast and `compile` (`torch.compile`), the last two on top of channels_last. Quick mode: batch 32, eager, two
timed steps on one thread (a few minutes). Full mode: batch 32, every option on a GPU; on
a CPU bf16 only with native bf16 support (on an AVX2 CPU it made both models 10-16x slower) and compile only
when asked for (the model is one graph without breaks, but inductor's C++ code generation for it took longer
than 15 minutes on a 2-core machine).

    python -m benchmarks.bench_model [--full] [--device cuda] [--batch 32] [--steps 5] [--options eager,bf16]
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

BODY_SIZE, PART_SIZE = (384, 192), (96, 192)
NUM_CLASSES = 751
REFERENCES = {"resnet": 2, "strong": 1}   # reference kind -> last stride of the registered resnet50


@dataclass(frozen=True)
class Options:
    name: str
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False


OPTIONS: dict[str, Options] = {o.name: o for o in (
    Options("eager"),
    Options("channels_last", channels_last=True),
    Options("bf16", channels_last=True, bf16=True),
    Options("compile", channels_last=True, compile=True),
)}


class Trainer:
    """One model, its inputs, loss and optimizer, prepared for `options` on `device`."""

    def __init__(self, kind: str, batch: int, options: Options, device: torch.device,
                 last_stride: int = 2) -> None:
        from reidtrain.model import build_model

        fmt = torch.channels_last if options.channels_last else torch.contiguous_format
        if kind == "ours":
            model = build_model("intra-inter", NUM_CLASSES, BODY_SIZE, PART_SIZE)
        else:
            model = build_model("resnet50", NUM_CLASSES, BODY_SIZE, last_stride=last_stride)
        inputs = {k: torch.randn_like(v) for k, v in model.example_inputs(batch).items()}
        self.model = model.to(device, memory_format=fmt).train()
        self.inputs = {k: v.to(device).contiguous(memory_format=fmt) for k, v in inputs.items()}
        ids = torch.randperm(NUM_CLASSES)[: max(1, batch // 4)]
        self.labels = ids.repeat_interleave(4)[:batch].to(device)      # P x K, as the identity sampler draws
        self.forward = torch.compile(self.model) if options.compile else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if options.bf16 else nullcontext())
        self.device = device
        self.kind = kind

    def loss(self, out) -> torch.Tensor:
        from reidtrain.train import sum_terms
        return sum_terms(self.model.loss(out, self.labels))

    def step(self) -> float:
        """One timed training step (seconds)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            loss = self.loss(self.forward(self.inputs))
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0


def measure(options: Options, batch: int, warmup: int, steps: int, device: torch.device,
            references: tuple[str, ...] = ("resnet",)) -> dict[str, dict]:
    """Fastest step time and images/s of ours and each reference under `options` (interleaved steps)."""
    trainers = {"ours": Trainer("ours", batch, options, device)}
    trainers.update({kind: Trainer("resnet", batch, options, device, REFERENCES[kind]) for kind in references})
    times: dict[str, list[float]] = {kind: [] for kind in trainers}
    peak: dict[str, float | None] = {kind: None for kind in trainers}
    for i in range(warmup + steps):
        for kind, trainer in trainers.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t = trainer.step()
            if device.type == "cuda":
                peak[kind] = max(peak[kind] or 0.0, torch.cuda.max_memory_allocated(device) / 2**20)
            if i >= warmup:
                times[kind].append(t)
    return {kind: {"step_s": min(ts), "img_s": batch / min(ts), "peak_mb": peak[kind]} for kind, ts in times.items()}


def cpu_has_bf16() -> bool:
    """Native bf16 convolutions on this CPU (AVX512-BF16 / AMX); without them bf16 autocast is ~10x slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def run(quick: bool = True, device: str | None = None, batch: int | None = None, steps: int | None = None,
        options: list[str] | None = None, threads: int | None = None,
        references: tuple[str, ...] = ("resnet", "strong")) -> list[dict]:
    """Benchmark rows (one per option and reference) in the suite's format; ratio = ours img/s ÷ reference img/s.

    Quick mode: the paper's batch 32 at 384x192, eager, one warm-up and two timed steps per model on one thread
    (a few minutes on a CPU); full mode: five timed steps and every option the device supports."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch = batch or 32
    steps = steps or (2 if quick else 5)
    warmup = 1 if quick else 2
    if options:
        names = list(options)
    elif quick:
        names = ["eager"]
    elif dev.type == "cuda":
        names = list(OPTIONS)
    else:  # inductor's C++ code generation for the 1,142-op graph takes > 15 min on a 2-core CPU
        names = ["eager", "channels_last"] + (["bf16"] if cpu_has_bf16() else [])
    unknown = [n for n in names if n not in OPTIONS]
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; known: {list(OPTIONS)}")
    if threads or (quick and dev.type == "cpu"):
        torch.set_num_threads(threads or 1)
    from reidtrain.allocator import keep_freed_memory
    keep_freed_memory()   # as `cli.py train` does (every model runs in this process)
    torch.manual_seed(0)
    results = {name: measure(OPTIONS[name], batch, warmup, steps, dev, references) for name in names}

    base = results.get("eager")
    helped = []
    if base:
        for name, r in results.items():
            if name != "eager":
                helped.append(f"{name}: ours x{r['ours']['img_s'] / base['ours']['img_s']:.2f}, "
                              f"ResNet-50 x{r[references[0]]['img_s'] / base[references[0]]['img_s']:.2f} vs eager")
    where = f"{dev.type}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else
                             f", {torch.get_num_threads()} thread(s)")
    label = {"resnet": "ResNet-50 (resnet50, last stride 2 as Table 12)",
             "strong": "ResNet-50 strong baseline (resnet50, last stride 1)"}
    rows = []
    for name, r in results.items():
        ours = r["ours"]
        for kind in references:
            ref = r[kind]
            row = {"stage": "model", "ours": f"intra-inter train step [{name}]", "ours_value": round(ours["img_s"], 3),
                   "reference": f"{label[kind]} train step [{name}]", "reference_value": round(ref["img_s"], 3),
                   "unit": "img/s", "ratio": round(ours["img_s"] / ref["img_s"], 3), "target": 2.0,
                   "notes": (f"the training loop's step (forward, model.loss, backward, SGD) at 384x192 (parts "
                             f"96x192), batch {batch}, fastest of {steps} interleaved steps on {where}; higher ratio "
                             f"= ours faster; target ~2 from Table 12 MACs (2.69 G vs 5.58 G)."
                             + (" Options vs eager: " + "; ".join(helped) + "." if helped and name == names[-1]
                                else ""))}
            if ours["peak_mb"] is not None:
                row["peak_mem_mb"] = round(max(ours["peak_mb"], ref["peak_mb"]), 1)
                row["notes"] += f" Peak GPU memory: ours {ours['peak_mb']:.0f} MB, reference {ref['peak_mb']:.0f} MB."
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="five timed steps and every option (default: quick)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 32, the paper's)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model (quick 2, full 5)")
    p.add_argument("--reference", default="resnet,strong", help="resnet (last stride 2) and/or strong (stride 1)")
    p.add_argument("--options", default=None, help=f"comma-separated subset of {','.join(OPTIONS)}")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (quick: 1)")
    a = p.parse_args()
    rows = run(quick=not a.full, device=a.device, batch=a.batch, steps=a.steps,
               options=a.options.split(",") if a.options else None, threads=a.threads,
               references=tuple(a.reference.split(",")))
    for r in rows:
        print(f"{r['ours']}: {r['ours_value']} img/s | {r['reference']}: {r['reference_value']} img/s | "
              f"ratio {r['ratio']}")
    print("BENCH-JSON:" + json.dumps(rows))


if __name__ == "__main__":
    main()

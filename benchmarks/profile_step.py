"""Where a training step's time goes: the profiler's top kernels for ResNet50, DSNet50 and DS2Net50.

Full width, 1000 classes, 224 px, one optimiser step (SGD) per iteration, eager; after warm-up,
``--steps`` steps are profiled per model (torch.profiler, CPU + CUDA activities). For each model:
the device time per step and the ``--top`` kernels by total device time (name, calls per step,
microseconds per step, share of the step), so the kernels that make DSNet's step cost more than
ResNet's can be named for a later fused kernel. JSON with ``--json``.

    python benchmarks/profile_step.py [--device cuda] [--batch 64] [--steps 5] [--top 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dsnet  # noqa: E402
from dsnet.core.provenance import artifact_header  # noqa: E402

MODELS = ("resnet50", "dsnet50", "ds2net50")


def profile(name: str, device: torch.device, batch: int, steps: int, size: int, top: int) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    model = dsnet.get_model(name).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    use_device = device.type == "cuda"

    def spent(e) -> float:  # self time on the device (CUDA kernels) or on the CPU
        return (
            (getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0))
            if use_device
            else e.self_cpu_time_total
        )

    kernels = [e for e in events if spent(e) > 0 and (not use_device or e.device_type.name == "CUDA")]
    total = sum(spent(e) for e in kernels)
    rows = sorted(kernels, key=spent, reverse=True)[:top]
    return {
        "model": name,
        "batch": batch,
        "steps": steps,
        "device_us_per_step": round(total / steps, 1),
        "top": [
            {
                "kernel": e.key[:140],
                "calls_per_step": round(e.count / steps, 1),
                "us_per_step": round(spent(e) / steps, 1),
                "share": round(spent(e) / total, 4),
            }
            for e in rows
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    out = {
        **artifact_header(argv, "benchmarks/profile_step.py"),
        "torch": str(torch.__version__),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "models": [],
    }
    for name in MODELS:
        r = profile(name, device, args.batch, args.steps, args.size, args.top)
        out["models"].append(r)
        base = out["models"][0]["device_us_per_step"]
        print(
            f"{name}: {r['device_us_per_step'] / 1000:.1f} ms of device time per step "
            f"({r['device_us_per_step'] / base:.2f}x resnet50)",
            flush=True,
        )
        for k in r["top"][:8]:
            print(
                f"   {100 * k['share']:5.1f} %  {k['us_per_step'] / 1000:7.2f} ms  x{k['calls_per_step']:<6} "
                f"{k['kernel'][:90]}"
            )
        if args.json:
            args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the CPU time of the dense shortcuts goes: the measurements behind README's "What makes
it fast", each old way against the new one, medians of interleaved runs; and a check that the
baseline of every ratio, our ResNet50, runs as fast as torchvision's.

- page faults per settled DSNet50 forward (batch 1), glibc's default heap vs
  ``dsnet.core.allocator.retain_freed_memory`` (fresh processes: the default varies with the heap's
  history); the measurements after it keep freed memory, as the other benchmarks do;
- DS2's strided 2x2 pool: ``avg_pool2d`` vs ``dsnet.models.kernels.MeanPool`` (1 x 128 x 56 x 56);
- backward of one folded shortcut term and of the folded N's statistics (8 x 256 x 56 x 56):
  autograd's ``addcmul_`` / ``sum`` + ``vector_norm`` vs the hand-written backwards;
- ResNet50 inference (batch 1, 224 px): ``torchvision.models.resnet50`` vs ``dsnet.get_model("resnet50")``.

    python benchmarks/cpu_details.py [--rounds 30] [--processes 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import textwrap
import time

import torch
import torchvision

import dsnet
from dsnet.core.allocator import retain_freed_memory
from dsnet.models.kernels import FoldedShortcutSum, GroupNormAffine, MeanPool

FAULTS = textwrap.dedent("""
    import resource, sys, torch, dsnet
    from dsnet.core.allocator import retain_freed_memory
    if sys.argv[1] == "retained":
        retain_freed_memory()
    torch.set_num_threads(2)
    model, x = dsnet.get_model("dsnet50").eval(), torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            model(x)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
""")


def median_ms(fns: dict[str, callable], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - started)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def show(label: str, ms: dict[str, float]) -> None:
    (old, t_old), (new, t_new) = ms.items()
    print(f"{label:<40} {old} {t_old:7.2f} ms   {new} {t_new:7.2f} ms   ({t_old / t_new:.2f}x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--processes", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(2)

    for heap in ("default", "retained"):
        faults = [
            float(
                subprocess.run([sys.executable, "-c", FAULTS, heap], capture_output=True, text=True, check=True).stdout
            )
            for _ in range(args.processes)
        ]
        print(
            f"page faults per DSNet50 forward, {heap} heap: "
            + ", ".join(f"{f:.0f}" for f in faults)
            + f"  ({args.processes} processes)"
        )

    retain_freed_memory()
    a = torch.randn(1, 128, 56, 56).relu()
    pool = MeanPool(128, 2)
    with torch.inference_mode():
        show(
            "2x2 pool, 1x128x56x56",
            median_ms(
                {
                    "avg_pool2d": lambda: torch.nn.functional.avg_pool2d(a, 2, 2, ceil_mode=True),
                    "MeanPool": lambda: pool(a),
                },
                args.rounds,
            ),
        )

    shape, per_channel = (8, 256, 56, 56), (8, 256, 1, 1)
    x, y, grad = torch.randn(shape), torch.randn(shape).relu().requires_grad_(), torch.randn(shape)
    scale, bias = torch.rand(per_channel, requires_grad=True), torch.rand(per_channel, requires_grad=True)

    def term(hand_written: bool):
        out = x.clone().requires_grad_() * 1  # a non-leaf, as bn3's output is
        if hand_written:
            out = FoldedShortcutSum.apply(out, bias, scale.unsqueeze(0), y)
        else:
            out = out.addcmul_(scale, y).add_(bias)
        return lambda: torch.autograd.grad(out, (y, scale, bias), grad, retain_graph=True)

    show(
        "backward of one shortcut term, 8x256x56x56",
        median_ms({"autograd": term(False), "hand-written": term(True)}, args.rounds),
    )

    def moments(hand_written: bool):
        if hand_written:
            scale, shift = GroupNormAffine.apply(y, 32, 1e-5)
        else:
            total = y.sum((2, 3)).view(8, 32, -1).sum(2)
            squares = torch.linalg.vector_norm(y, dim=(2, 3)).square().view(8, 32, -1).sum(2)
            mean = total / (8 * 56 * 56)
            rstd = (squares / (8 * 56 * 56) - mean.square() + 1e-5).rsqrt()
            scale, shift = per_channel(rstd, 256), per_channel(-mean * rstd, 256)
        loss = (scale + shift).sum()
        return lambda: torch.autograd.grad(loss, y, retain_graph=True)

    show(
        "backward of N's statistics, 8x256x56x56",
        median_ms({"autograd": moments(False), "hand-written": moments(True)}, args.rounds),
    )

    reference, ours = torchvision.models.resnet50().eval(), dsnet.get_model("resnet50").eval()
    image = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        show(
            "ResNet50 inference, batch 1",
            median_ms({"torchvision": lambda: reference(image), "ours": lambda: ours(image)}, args.rounds),
        )


if __name__ == "__main__":
    main()

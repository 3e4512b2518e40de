"""Memory traffic and op count of one training step, counted exactly: a noise-free proxy for the GPU.

On a GPU the dense shortcuts' cost is memory traffic (every elementwise op and reduction reads and
writes whole activations) and kernel launches; this counts both on any device, op by op, with a
``TorchDispatchMode``: bytes read (every tensor operand) plus bytes written (every result) of each
ATen op, views excluded, in three groups: convolutions, BatchNorm, and everything else (ReLU,
shortcut sums, N's statistics, pooling, loss, ...). Nothing is timed, so the numbers repeat exactly
and can be compared across commits (the README compares this commit with the one whose GPU
training step was measured). Caches are ignored: every operand counts as a trip to memory, which
is what activations far larger than a GPU's L2 cost.

``--compile`` counts the same step compiled by Inductor (``torch.compile``, fullgraph), with
Inductor's own count: the bytes each kernel it launches reads and writes, library kernels
(convolutions, matmuls) by name and every kernel Inductor generates (fused elementwise ops and
reductions, BatchNorm included) as "generated kernel". Inductor fuses for the CPU here much as
it does for CUDA (Triton kernels there), so this shows what fusion leaves of the dense shortcuts'
traffic without a GPU; compiling three full models takes a few minutes.

    python benchmarks/traffic.py [--batch 8] [--size 224] [--width 1.0] [--compile]
"""
from __future__ import annotations

import argparse
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import dsnet

MODELS = ("resnet50", "dsnet50", "ds2net50")
GROUPS = ("convolution", "batch norm", "other")


def _group(op: str) -> str:
    if "convolution" in op:
        return "convolution"
    if "batch_norm" in op:
        return "batch norm"
    return "other"


@dataclass
class Traffic:
    """Bytes moved and ops run, per ATen op; totals per group of ops (or "all")."""

    bytes_by_op: Counter = field(default_factory=Counter)
    ops_by_op: Counter = field(default_factory=Counter)

    def bytes(self, group: str = "all") -> int:
        return sum(b for op, b in self.bytes_by_op.items() if group in ("all", _group(op)))

    def ops(self, group: str = "all") -> int:
        return sum(n for op, n in self.ops_by_op.items() if group in ("all", _group(op)))


class TrafficMode(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.traffic = Traffic()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        # views, allocations and dtype arithmetic (promote_types) launch nothing and move nothing
        if tensors and not (_is_view(func) or name.startswith(("empty", "new_empty"))):
            self.traffic.bytes_by_op[name] += sum(t.numel() * t.element_size() for t in tensors)
            self.traffic.ops_by_op[name] += 1
        return out


def _is_view(func) -> bool:
    """Ops that return an alias of an input (no data moved)."""
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


def eager_traffic(module: torch.nn.Module, x: Tensor, loss: Callable[[Tensor], Tensor]) -> Traffic:
    """Forward and backward of ``loss(module(x))``, counted op by op."""
    with TrafficMode() as mode:
        loss(module(x)).backward()
    return mode.traffic


def compiled_traffic(module: torch.nn.Module, x: Tensor, loss: Callable[[Tensor], Tensor]) -> Traffic:
    """Forward and backward of ``loss(module(x))`` compiled by Inductor, counted by Inductor's
    scheduler kernel by kernel."""
    from torch._inductor import compile_fx, ir, metrics
    from torch._inductor.scheduler import ExternKernelSchedulerNode, NopKernelSchedulerNode

    torch._dynamo.reset()
    metrics.reset()
    # Inductor counts only while its metrics log is enabled, and not for graphs it takes from a cache.
    log = compile_fx.inductor_metrics_log
    level, propagate = log.level, log.propagate
    log.setLevel(logging.INFO)
    log.propagate = False  # counted, not printed
    try:
        with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
            loss(torch.compile(module, fullgraph=True, dynamic=False)(x)).backward()
    finally:
        log.setLevel(level)
        log.propagate = propagate
    traffic = Traffic()
    for node, _ in metrics.nodes_num_elem:
        if isinstance(node, NopKernelSchedulerNode) or isinstance(node.node, ir.MultiOutput):
            continue  # views, and the parts of a kernel's tuple result: nothing launched
        kernel = "generated kernel"
        if isinstance(node, ExternKernelSchedulerNode):  # a library kernel: aten::convolution -> "convolution"
            kernel = node.node.op_overload._opname if node.node.op_overload else node.node.python_kernel_name.split(".")[-1]
        traffic.bytes_by_op[kernel] += node.get_read_write_buffers_sizes()
        traffic.ops_by_op[kernel] += 1
    return traffic


def training_step_traffic(name: str, batch: int, size: int, width: float, compiled: bool = False) -> Traffic:
    torch.manual_seed(0)
    model = dsnet.get_model(name, width=width).train()
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    return (compiled_traffic if compiled else eager_traffic)(model, x, lambda logits: F.cross_entropy(logits, y))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="count the torch.compile'd step (Inductor's kernels)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    traffic = {n: training_step_traffic(n, args.batch, args.size, args.width, args.compile) for n in MODELS}
    base = traffic["resnet50"]
    print(f"one training step (forward + backward), {'compiled' if args.compile else 'eager'}, batch {args.batch}, "
          f"{args.size} px, width {args.width}; GB moved ({'kernels' if args.compile else 'ops'}), ratio vs resnet50")
    print(f"{'group':<14}" + "".join(f"{n:>26}" for n in MODELS))
    for group in (*(g for g in GROUPS if base.bytes(g)), "all"):  # compiled: BatchNorm is in generated kernels
        cells = [f"{t.bytes(group) / 1e9:7.2f} ({t.ops(group):5d}) {t.bytes(group) / max(1, base.bytes(group)):5.2f}x"
                 for t in traffic.values()]
        print(f"{group:<14}" + "".join(f"{c:>26}" for c in cells))
    for n in MODELS[1:]:
        extra = traffic[n].bytes_by_op - base.bytes_by_op
        top = ", ".join(f"{op} {b / 1e9:.2f}" for op, b in extra.most_common(6))
        print(f"{n}: extra GB by op: {top}")


if __name__ == "__main__":
    main()

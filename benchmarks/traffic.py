"""Memory traffic and op count of one training step, counted exactly: a noise-free proxy for the GPU.

On a GPU the dense shortcuts' cost is memory traffic (every elementwise op and reduction reads and
writes whole activations) and kernel launches; this counts both on any device, op by op, with a
``TorchDispatchMode``: bytes read (every tensor operand) plus bytes written (every result) of each
ATen op, views excluded, in three groups: convolutions, BatchNorm, and everything else (ReLU,
shortcut sums, N's statistics, pooling, loss, ...). Nothing is timed, so the numbers repeat exactly
and can be compared across commits (the README compares this commit with the one whose GPU
training step was measured). Caches are ignored: every operand counts as a trip to memory, which
is what activations far larger than a GPU's L2 cost.

``--compile`` counts the same step compiled by Inductor (``torch.compile``, fullgraph), as
Inductor's scheduler fused it: the bytes each kernel reads and writes, library kernels
(convolutions, matmuls) by name and every kernel Inductor generates (fused elementwise ops and
reductions, BatchNorm included) as "generated kernel". ``--compile triton`` counts the kernels of
Inductor's Triton scheduling, the code path of a CUDA GPU, made on the CPU: so what fusion leaves
of the dense shortcuts' traffic on a GPU shows without one. Compiling three full models takes a
few minutes.

    python benchmarks/traffic.py [--batch 8] [--size 224] [--width 1.0] [--compile [cpp|triton]]
"""

from __future__ import annotations

import argparse
import copy
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Literal
from unittest import mock

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


Scheduling = Literal["cpp", "triton"]


def compiled_traffic(
    module: torch.nn.Module, x: Tensor, loss: Callable[[Tensor], Tensor], scheduling: Scheduling = "cpp"
) -> Traffic:
    """Forward and backward of ``loss(module(x))`` compiled by Inductor, counted kernel by kernel
    as Inductor's scheduler fused them.

    ``scheduling="cpp"`` counts the kernels that run here (Inductor's C++ code generation for the
    CPU). ``"triton"`` counts the kernels Inductor's Triton scheduling, its GPU code path, makes of
    the same graphs: each graph is scheduled a second time for Triton (``cpu_backend="triton"``) and
    counted, and its code generation stopped (there is no Triton for the CPU here); the step itself
    still runs on the C++ kernels. What only a GPU turns on (mix-order reductions) is not in it.
    """
    from torch._inductor import config
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner
    from torch._inductor.scheduler import Scheduler

    traffic = Traffic()
    codegen = Scheduler.codegen

    def count_then_codegen(self, *args, **kwargs):
        _count_kernels(self.nodes, traffic)
        return codegen(self, *args, **kwargs)

    def count_and_stop(self, *args, **kwargs):
        _count_kernels(self.nodes, traffic)
        raise _Counted

    def schedule_for_triton_then_compile(gm, example_inputs, **kwargs):
        with config.patch(cpu_backend="triton"), mock.patch.object(Scheduler, "codegen", count_and_stop):
            try:
                compile_fx_inner(copy.deepcopy(gm), example_inputs, **kwargs)  # lowering rewrites its graph
            except Exception as error:  # Inductor wraps what the scheduler raises
                if not _caused_by(error, _Counted):
                    raise
        return compile_fx_inner(gm, example_inputs, **kwargs)

    if scheduling == "cpp":
        backend, counting = "inductor", mock.patch.object(Scheduler, "codegen", count_then_codegen)
    else:
        backend, counting = partial(compile_fx, inner_compile=schedule_for_triton_then_compile), nullcontext()
    torch._dynamo.reset()
    # Graphs taken from a cache are never scheduled, so nothing would be counted.
    with counting, config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        loss(torch.compile(module, backend=backend, fullgraph=True, dynamic=False)(x)).backward()
    return traffic


class _Counted(Exception):
    """Stops Inductor's code generation once the Triton schedule is counted."""


def _caused_by(error: BaseException | None, kind: type) -> bool:
    while error is not None and not isinstance(error, kind):
        error = error.__cause__ or error.__context__
    return error is not None


def _count_kernels(nodes, traffic: Traffic) -> None:
    """What each scheduled kernel reads and writes; library kernels (convolutions, matmuls) by name,
    Inductor's own (fused elementwise ops and reductions, BatchNorm included) as "generated kernel"."""
    from torch._inductor import ir
    from torch._inductor.scheduler import ExternKernelSchedulerNode, NopKernelSchedulerNode

    for node in nodes:
        if isinstance(node, NopKernelSchedulerNode) or isinstance(node.node, ir.MultiOutput):
            continue  # views, and the parts of a kernel's tuple result: nothing launched
        kernel = "generated kernel"
        if isinstance(node, ExternKernelSchedulerNode):  # aten::convolution -> "convolution"
            kernel = (
                node.node.op_overload._opname if node.node.op_overload else node.node.python_kernel_name.split(".")[-1]
            )
        traffic.bytes_by_op[kernel] += node.get_read_write_buffers_sizes()
        traffic.ops_by_op[kernel] += 1


def training_step_traffic(
    name: str, batch: int, size: int, width: float, compiled: Scheduling | None = None
) -> Traffic:
    """Eager (``compiled=None``) or compiled with the given Inductor scheduling."""
    torch.manual_seed(0)
    model = dsnet.get_model(name, width=width).train()
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    loss = lambda logits: F.cross_entropy(logits, y)
    return eager_traffic(model, x, loss) if compiled is None else compiled_traffic(model, x, loss, compiled)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--compile",
        nargs="?",
        const="cpp",
        choices=("cpp", "triton"),
        help="count the torch.compile'd step: the kernels that run here (cpp, the default) or "
        "those Inductor's Triton scheduling (its GPU code path) makes of it (triton)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    traffic = {n: training_step_traffic(n, args.batch, args.size, args.width, args.compile) for n in MODELS}
    base = traffic["resnet50"]
    how = f"compiled ({args.compile} scheduling)" if args.compile else "eager"
    print(
        f"one training step (forward + backward), {how}, batch {args.batch}, "
        f"{args.size} px, width {args.width}; GB moved ({'kernels' if args.compile else 'ops'}), ratio vs resnet50"
    )
    print(f"{'group':<14}" + "".join(f"{n:>26}" for n in MODELS))
    for group in (*(g for g in GROUPS if base.bytes(g)), "all"):  # compiled: BatchNorm is in generated kernels
        cells = [
            f"{t.bytes(group) / 1e9:7.2f} ({t.ops(group):5d}) {t.bytes(group) / max(1, base.bytes(group)):5.2f}x"
            for t in traffic.values()
        ]
        print(f"{group:<14}" + "".join(f"{c:>26}" for c in cells))
    for n in MODELS[1:]:
        extra = traffic[n].bytes_by_op - base.bytes_by_op
        top = ", ".join(f"{op} {b / 1e9:.2f}" for op, b in extra.most_common(6))
        print(f"{n}: extra GB by op: {top}")


if __name__ == "__main__":
    main()

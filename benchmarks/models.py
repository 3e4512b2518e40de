"""DSNet50 / DS2Net50 cost relative to ResNet50, measured side by side in one process.

Inference latency (224 px, batch 1 and 8), training-step time and training-step memory, CPU (and
CUDA when available). Models run interleaved, round after round, in a random order each round (the
model measured right after another one is measured differently), and each ratio is the median of
per-round ratios, so drifting machine load affects numerator and denominator alike; the brackets
give the interquartile range of those per-round ratios.

    python benchmarks/models.py [--rounds 15] [--threads 2] [--device cpu|cuda] [--glibc-default-heap]
                                [--amp] [--channels-last] [--compile] [--train-only | --inference-only]
                                [--ieee-fp32] [--compare-rev REV ...]

The heap keeps freed memory (dsnet.core.allocator, as the app does); with glibc's adaptive default
every forward may fault the memory of DSNet's N(Y_i) history back in, or not, run by run.
``--amp`` (fp16 autocast on CUDA, bf16 on the CPU) and ``--channels-last`` time the models as
``dsnet.evidence.train`` trains them on CUDA; ``--compile`` times ``torch.compile``d models (all three, so
the baseline gets the same fusion); ``--ieee-fp32`` turns off TF32 convolutions on CUDA (PyTorch's
default is on; GPUs before Ampere had none, and the paper, from 2020, does not name its GPUs). The
memory line is always eager fp32, Table 9's setting.

``--compare-rev REV`` also times DSNet50 and DS2Net50 as the model code of git revision REV builds
them (``dsnet50@REV``, ``ds2net50@REV``; any layout: ``dsnet/models.py`` before the package move,
``dsnet/models/networks.py`` after), with the working tree's weights and in the same interleaved
inference rounds, so old and new code are compared side by side in one process (their outputs are
checked equal to the working tree's first). Inference only: the training rounds keep the three models.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import dsnet
from dsnet.core.allocator import retain_freed_memory
from dsnet.evidence.evaluate import train_step_memory

MODELS = ("resnet50", "dsnet50", "ds2net50")
PAPER = {"dsnet50": (1.19, 1.22), "ds2net50": (1.26, 1.31)}  # Table 9: (time, memory) vs ResNet50


REPO = Path(__file__).resolve().parents[1]
# Where a revision keeps its networks and kernels: after the package move, before it (kernels since f6297bd).
LAYOUTS = (
    {"networks": "dsnet/models/networks.py", "kernels": "dsnet/models/kernels.py"},
    {"networks": "dsnet/models.py", "kernels": "dsnet/kernels.py"},
)
REGISTRY_STUB = """BUILDERS = {}


def register_model(name=None):
    def wrapper(fn):
        BUILDERS[name or fn.__name__] = fn
        return fn
    return wrapper
"""


def models_at(rev: str):
    """The networks module of git revision ``rev``, imported as a package of its own (its kernels
    beside it, a registry of its own), so it runs next to the working tree's in one process."""

    def show(path: str) -> str | None:
        done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout if done.returncode == 0 else None

    for layout in LAYOUTS:
        if (networks := show(layout["networks"])) is not None:
            break
    else:
        raise SystemExit(f"--compare-rev {rev}: no dsnet/models/networks.py or dsnet/models.py there")
    package = "dsnet_at_" + re.sub(r"\W", "_", rev)
    root = Path(tempfile.mkdtemp(prefix="dsnet-rev-")) / package
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "registry.py").write_text(REGISTRY_STUB)
    if (kernels := show(layout["kernels"])) is not None:
        (root / "kernels.py").write_text(kernels)
    # The package's own kernels and registry, not the working tree's (absolute imports after the move).
    networks = re.sub(
        r"^from dsnet\.models\.(kernels|registry) import", r"from .\1 import", networks, flags=re.MULTILINE
    )
    (root / "networks.py").write_text(networks)
    sys.path.insert(0, str(root.parent))
    return importlib.import_module(f"{package}.networks")


def print_load(at_start: float) -> None:
    """Other processes on the cores make the ratios swing: with a thread per core, an op waits for
    whichever thread was descheduled, so times grow many-fold and single runs' ratios scatter
    (docs/benchmarks.md, issue 23). The 1-minute load average, this run included, says whether a
    run had the cores to itself (about 2 on this 2-core machine: the two threads)."""
    print(
        f"machine load (1-minute load average, this run included): {at_start:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end (cores: {os.cpu_count()})"
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--glibc-default-heap", action="store_true", help="skip retain_freed_memory()")
    p.add_argument("--amp", action="store_true", help="autocast: fp16 on CUDA, bf16 on the CPU")
    p.add_argument("--channels-last", action="store_true", help="weights and inputs in channels_last")
    p.add_argument("--compile", action="store_true", help="torch.compile every model (Inductor, static shapes)")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--train-only", action="store_true", help="skip the inference latencies")
    only.add_argument("--inference-only", action="store_true", help="skip the training step and its memory")
    p.add_argument(
        "--ieee-fp32", action="store_true", help="CUDA: float32 convolutions without TF32 (as on GPUs before Ampere)"
    )
    p.add_argument(
        "--compare-rev",
        action="append",
        default=[],
        metavar="REV",
        help="also time dsnet50/ds2net50 as git revision REV builds them (inference; repeatable)",
    )
    args = p.parse_args()
    heap = "glibc default" if args.glibc_default_heap else f"retained: {retain_freed_memory()}"
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.ieee_fp32:
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.manual_seed(0)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    models = {n: dsnet.get_model(n).eval().to(device) for n in MODELS}
    if args.channels_last:
        models = {n: m.to_channels_last() for n, m in models.items()}
    timed_models = dict(models)
    with torch.random.fork_rng(devices=[]):  # the same weights and inputs as without --compare-rev
        for rev in args.compare_rev:
            module = models_at(rev)
            for n in ("dsnet50", "ds2net50"):
                old = getattr(module, n)().eval().to(device)
                old.load_state_dict(models[n].state_dict())
                if args.channels_last:  # a method since f6297bd, a function before
                    old = old.to_channels_last() if hasattr(old, "to_channels_last") else module.to_channels_last(old)
                timed_models[f"{n}@{rev}"] = old
        checks = []
        with torch.inference_mode():
            probe = torch.randn(1, 3, 224, 224, device=device).contiguous(memory_format=memory_format)
            for n in list(timed_models)[len(MODELS) :]:
                new, old = (timed_models[n.split("@")[0]](probe), timed_models[n](probe))
                checks.append(
                    f"{n}: outputs {'equal' if torch.equal(new, old) else 'NOT equal'} to the working "
                    f"tree's (max |difference| {(new - old).abs().max().item():.1e})"
                )
    names = tuple(timed_models)
    width = max(12, *(len(n) + 2 for n in names))
    runners = {n: torch.compile(m, dynamic=False) if args.compile else m for n, m in timed_models.items()}
    autocast = torch.autocast(
        device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16, enabled=args.amp
    )
    name = "cpu"
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)} (fp32 convolutions: {torch.backends.cudnn.conv.fp32_precision})"
    print(
        f"device {name}, threads {torch.get_num_threads()}, torch {torch.__version__}, {args.rounds} rounds, "
        f"heap {heap}, amp {args.amp}, channels_last {args.channels_last}, compile {args.compile}"
    )
    for line in checks:
        print(line)
    load_at_start = os.getloadavg()[0]
    print(f"{'measure':<28}" + "".join(f"{n:>{width}}" for n in names) + "   ratios vs resnet50 (median of rounds)")

    def warm_up(label: str, n: str, run) -> None:
        """Compiling takes minutes a model: say how long each took, so a run cut short says where."""
        seconds = timed(run, device)
        if args.compile:
            print(f"  (compiled {n} for {label} in {seconds:.0f} s)", flush=True)

    order = random.Random(0)

    def shuffled(among: tuple[str, ...] = MODELS) -> list[str]:
        return order.sample(among, len(among))

    def report(label: str, rounds: dict[str, list[float]], unit: str, scale: float) -> dict[str, float]:
        med = {n: statistics.median(v) for n, v in rounds.items()}
        per_round = {n: [a / b for a, b in zip(rounds[n], rounds["resnet50"], strict=True)] for n in rounds}
        ratios = {n: statistics.median(v) for n, v in per_round.items()}

        def spread(v: list[float]) -> str:
            if len(v) < 4:
                return ""
            q1, _, q3 = statistics.quantiles(v, n=4)
            return f" [{q1:.2f}-{q3:.2f}]"

        print(
            f"{label:<28}"
            + "".join(f"{scale * med[n]:>{width - len(unit)}.1f}{unit}" for n in rounds)
            + "   "
            + "  ".join(f"{n} {ratios[n]:.3f}{spread(per_round[n])}" for n in list(rounds)[1:]),
            flush=True,
        )
        return ratios

    for batch in () if args.train_only else (1, 8):
        x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=memory_format)
        rounds: dict[str, list[float]] = {n: [] for n in names}
        with torch.inference_mode(), autocast:
            for n, m in runners.items():  # warm-up: oneDNN's primitive cache and the heap settle (and compilation)
                warm_up(f"inference, batch {batch}", n, lambda m=m, x=x: [m(x) for _ in range(3)])
            for _ in range(args.rounds):
                for n in shuffled(names):
                    rounds[n].append(timed(lambda n=n, x=x: runners[n](x), device))
        report(f"inference, batch {batch}", rounds, "ms", 1000)
    if args.inference_only:
        print_load(load_at_start)
        return

    x = torch.randn(args.train_batch, 3, 224, 224, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 1000, (args.train_batch,), device=device)
    optimisers = {n: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for n, m in models.items()}

    def step(n: str) -> None:
        models[n].train()
        with autocast:
            loss = torch.nn.functional.cross_entropy(runners[n](x), y)
        optimisers[n].zero_grad(set_to_none=True)
        loss.backward()
        optimisers[n].step()

    for n in MODELS:
        warm_up(f"training step, batch {args.train_batch}", n, lambda n=n: [step(n) for _ in range(2)])
    rounds = {n: [] for n in MODELS}
    for _ in range(args.rounds):
        for n in shuffled():
            rounds[n].append(timed(lambda n=n: step(n), device))
    time_ratio = report(f"training step, batch {args.train_batch}", rounds, "ms", 1000)
    memory = {n: [train_step_memory(models[n], 224, args.train_batch)] for n in MODELS}
    memory_ratio = report(f"training memory, batch {args.train_batch}", memory, "MB", 1)
    for n, (t, mem) in PAPER.items():
        print(f"{n}: training time {time_ratio[n]:.2f}x (paper {t}x), memory {memory_ratio[n]:.2f}x (paper {mem}x)")
    print_load(load_at_start)


if __name__ == "__main__":
    main()

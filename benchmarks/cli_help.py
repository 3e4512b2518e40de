"""How fast every command line answers ``--help``, next to what importing PyTorch alone costs.

    python benchmarks/cli_help.py [--runs 5] [--json docs/cli-help.json]

Each command runs ``--help`` in a fresh process from the repository root ``--runs`` times; the median
wall time is reported with, measured in the same run, the median of ``python -c "import torch"``.
Help never imports torchvision, pytorch-grad-cam, SciPy, Matplotlib or Gradio (seconds each here);
the commands that train or explain import PyTorch itself (``tests/test_cli.py`` checks both).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dsnet.core.provenance import revision  # noqa: E402 - no PyTorch: the timings stay clean

# Every command line of the project, and whether its help may import PyTorch.
COMMANDS: dict[str, tuple[list[str], bool]] = {
    "python app.py": (["app.py"], False),
    "python -m dsnet.evidence.train": (["-m", "dsnet.evidence.train"], True),
    "python -m dsnet.evidence.evaluate": (["-m", "dsnet.evidence.evaluate"], True),
    "python -m dsnet.evidence.explain": (["-m", "dsnet.evidence.explain"], True),
    "python -m dsnet.evidence.figure": (["-m", "dsnet.evidence.figure"], True),
    "python -m dsnet.zoo": (["-m", "dsnet.zoo"], False),
    "python -m app.space": (["-m", "app.space"], False),
    "python -m dsnet.evidence.curves": (["-m", "dsnet.evidence.curves"], False),
    "python -m dsnet.evidence.seedstudy": (["-m", "dsnet.evidence.seedstudy"], True),
    "python -m dsnet.evidence.seedreport": (["-m", "dsnet.evidence.seedreport"], False),
    "python -m dsnet.evidence.localise": (["-m", "dsnet.evidence.localise"], True),
    "python -m dsnet.evidence.sanity": (["-m", "dsnet.evidence.sanity"], True),
    "python -m dsnet.evidence.report": (["-m", "dsnet.evidence.report"], False),
}
SLOW_TO_IMPORT = ("torchvision", "pytorch_grad_cam", "scipy", "matplotlib", "gradio")


def seconds(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", type=Path, help="write the measurements here")
    args = p.parse_args(argv)
    torch_import = statistics.median(seconds(["-c", "import torch"]) for _ in range(args.runs))
    rows = {}
    for name, (command, _) in COMMANDS.items():
        median = statistics.median(seconds([*command, "--help"]) for _ in range(args.runs))
        rows[name] = {"median_seconds": round(median, 3), "over_torch_import": round(median / torch_import, 2)}
        print(f"{name + ' --help':<34} {median:5.2f} s  ({median / torch_import:.2f}x `import torch`)")
    print(f"{'import torch':<34} {torch_import:5.2f} s")
    if args.json:
        rev = revision(ROOT)
        commit = rev.commit
        dirty = rev.dirty
        record = {
            "command": "python benchmarks/cli_help.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "what": "median wall seconds of `<command> --help` in a fresh process, and of `import torch`",
            "commit": commit,
            "local_changes": dirty,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "runs": args.runs,
            "import_torch_seconds": round(torch_import, 3),
            "commands": rows,
            "slowest_seconds": max(r["median_seconds"] for r in rows.values()),
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

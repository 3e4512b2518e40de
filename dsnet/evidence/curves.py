"""Training curves: ``python -m dsnet.evidence.curves RUN/log.jsonl ... --out figure.png``.

Train and val top-1 error per epoch for one or more runs of ``python -m dsnet.evidence.train`` (each writes
``log.jsonl`` and its own ``curves.png``), the layout of the paper's Figure 4.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dsnet.core.files import atomic_path


def plot_curves(logs: dict[str, list[dict]], out: Path) -> None:
    """Train/val top-1 error per epoch, one colour per run (the layout of the paper's Figure 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, (name, rows) in enumerate(logs.items()):
        epochs = [r["epoch"] for r in rows]
        colour = f"C{i}"
        ax.plot(epochs, [100 - r["train_top1"] for r in rows], "--", color=colour, label=f"{name} train")
        ax.plot(epochs, [100 - r["val_top1"] for r in rows], "-", color=colour, label=f"{name} val")
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dsnet.evidence.curves",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("logs", nargs="+", type=Path, metavar="LOG", help="log.jsonl files; a run is named by its folder")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = p.parse_args(argv)
    plot_curves({log.parent.name: read_log(log) for log in args.logs}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

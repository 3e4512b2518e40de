"""Does the ordering of the models hold across seeds? ``python -m dsnet.evidence.seedreport EVALUATE_JSON``.

Reads what ``python -m dsnet.evidence.evaluate --runs`` wrote for the seed study (per-image correctness of
every run and model on the same images) and reports, for the runs whose name matches ``--runs``
(``seed<N>-gpu``: one training pipeline for every seed):

* per model: top-1 on every seed, mean and sample standard deviation;
* per seed and per pair of models: the paired difference with its bootstrap 95 % interval and an
  exact McNemar test (the same images, so a pair is compared image by image);
* per pair across seeds: the mean difference, its t interval over seeds, how many seeds order the
  pair the same way, and the exact sign-test p over seeds (a seed is one draw of the training noise);
* the rule for the sentence: an ordering "holds" when every seed orders the pair the same way.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from dsnet.core.provenance import artifact_header
from dsnet.evidence import stats
from dsnet.evidence.cli import refused


class NoRuns(ValueError):
    """The evaluation report has no run the ``--runs`` pattern matches."""


def per_seed(report: dict, pattern: str) -> dict[int, dict[str, list[bool]]]:
    """seed -> model -> per-image correctness, for the runs whose name matches ``pattern`` (its group 1: the seed)."""
    out: dict[int, dict[str, list[bool]]] = {}
    for key, bits in report["per_image"]["correct"].items():
        run, model, _crop = key.split("/")
        match = re.fullmatch(pattern, run)
        if match:
            out.setdefault(int(match.group(1)), {})[model] = [ch == "1" for ch in bits]
    return dict(sorted(out.items()))


def sign_test(positive: int, n: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven if either order were equally likely."""
    k = max(positive, n - positive)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n)


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    from scipy import stats as sps  # on use: SciPy takes a second to import

    mean, n = statistics.fmean(values), len(values)
    if n < 2:
        return mean, mean
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half


def summarise(report: dict, pattern: str, models: list[str] | None = None) -> dict[str, Any]:
    seeds = per_seed(report, pattern)
    if not seeds:
        raise NoRuns(f"no run matches {pattern!r} in the report (runs: {report.get('runs')})")
    models = models or [m for m in ("resnet50", "dsnet50", "ds2net50") if all(m in s for s in seeds.values())]
    top1 = {m: [100 * sum(s[m]) / len(s[m]) for s in seeds.values()] for m in models}
    out: dict[str, Any] = {
        "runs": pattern,
        "seeds": list(seeds),
        "images": len(next(iter(seeds.values()))[models[0]]),
        "models": {},
        "pairs": [],
    }
    for m in models:
        v = top1[m]
        out["models"][m] = {
            "top1": [round(x, 2) for x in v],
            "mean": round(statistics.fmean(v), 2),
            "sd": round(statistics.stdev(v), 2) if len(v) > 1 else None,
        }
    for a, b in itertools.combinations(models, 2):
        rows = []
        for seed, s in seeds.items():
            m = stats.mcnemar(s[a], s[b])
            rows.append(
                {
                    "seed": seed,
                    **stats.compare_accuracy(s[a], s[b]).as_dict(scale=100, digits=2),
                    "only_a_right": m.only_a,
                    "only_b_right": m.only_b,
                }
            )
        diffs = [top1[b][i] - top1[a][i] for i in range(len(seeds))]
        low, high = t_interval(diffs)
        positive = sum(d > 0 for d in diffs)
        holds = positive == len(diffs) or positive == 0 and all(d < 0 for d in diffs)
        out["pairs"].append(
            {
                "a": a,
                "b": b,
                "per_seed": rows,
                "diff_mean": round(statistics.fmean(diffs), 2),
                "diff_sd": round(statistics.stdev(diffs), 2) if len(diffs) > 1 else None,
                "diff_t95": [round(low, 2), round(high, 2)],
                "seeds_b_better": positive,
                "seeds": len(diffs),
                "sign_test_p": round(sign_test(positive, len(diffs)), 4),
                "mcnemar_p_below_0.05": sum(r["p_value"] < 0.05 for r in rows),
                "ordering_holds": holds,
            }
        )
    return out


def sentence(summary: dict) -> str:
    """The plain reading, one clause per pair."""
    parts = []
    for p in summary["pairs"]:
        n, k = p["seeds"], p["seeds_b_better"]
        if p["ordering_holds"]:
            winner, loser = (p["b"], p["a"]) if k == n else (p["a"], p["b"])
            parts.append(
                f"{winner} beats {loser} on all {n} seeds (mean {abs(p['diff_mean']):.2f} points, "
                f"sd {p['diff_sd']:.2f}; McNemar p < 0.05 on {p['mcnemar_p_below_0.05']} of {n})"
            )
        else:
            parts.append(
                f"{p['b']} vs {p['a']}: no stable order ({p['b']} ahead on {k} of {n} seeds, mean "
                f"{p['diff_mean']:+.2f} points)"
            )
    return "; ".join(parts) + "."


def curves(runs: Path, shipped: Path, models: list[str], seeds: list[int], tag: str) -> dict[str, Any]:
    """The shipped run's train-loss curve (DataLoader pipeline, seed 0) beside the study's seeds: the
    largest per-epoch difference from the study's seed 0 says whether the new pipeline trains alike."""
    from dsnet.evidence.curves import read_log

    out = {}
    for m in models:
        old = read_log(shipped / f"{m}.log.jsonl")
        new = {s: read_log(runs / f"seed{s}-{tag}" / m / "log.jsonl") for s in seeds}
        first = new[seeds[0]]
        out[m] = {
            "shipped": [round(r["train_loss"], 4) for r in old],
            "study": {s: [round(r["train_loss"], 4) for r in rows] for s, rows in new.items()},
            "max_abs_diff_vs_shipped": round(
                max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(old, first)), 3
            ),
            "final_vs_shipped": [round(old[-1]["train_loss"], 3), round(first[-1]["train_loss"], 3)],
        }
    return out


def plot(curves_by_model: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves_by_model), figsize=(4.2 * len(curves_by_model), 3.4), sharey=True)
    for ax, (m, c) in zip(axes, curves_by_model.items()):
        for s, losses in c["study"].items():
            ax.plot(
                range(1, len(losses) + 1),
                losses,
                color="tab:blue",
                alpha=0.45,
                lw=1,
                label="study, seeds 0-4" if s == next(iter(c["study"])) else None,
            )
        ax.plot(
            range(1, len(c["shipped"]) + 1),
            c["shipped"],
            color="black",
            lw=1.4,
            ls="--",
            label="shipped run (DataLoader pipeline, seed 0)",
        )
        ax.set_title(m)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("train loss")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dsnet.evidence.seedreport",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("evaluate_json", type=Path, help="python -m dsnet.evidence.evaluate --runs ... --json's output")
    p.add_argument("--runs", default=r"seed(\d+)-gpu", help="regular expression of the run names; group 1 is the seed")
    p.add_argument("--json", type=Path, help="write the summary (with the command, commit and date)")
    p.add_argument(
        "--logs",
        type=Path,
        help="the study's run folders (seed<N>-<tag>/<model>/log.jsonl): compare the "
        "train-loss curves with --shipped-logs",
    )
    p.add_argument(
        "--shipped-logs", type=Path, default=Path("checkpoints/imagenette"), help="the shipped zoo's <model>.log.jsonl"
    )
    p.add_argument("--tag", default="gpu")
    p.add_argument("--plot", type=Path, help="the curves as a PNG (with --logs)")
    args = p.parse_args(argv)
    report = json.loads(args.evaluate_json.read_text())
    try:
        summary = summarise(report, args.runs)
    except NoRuns as e:
        return refused(e)
    summary["reading"] = sentence(summary)
    if args.logs:
        summary["train_loss_curves"] = curves(
            args.logs, args.shipped_logs, list(summary["models"]), summary["seeds"], args.tag
        )
        for m, c in summary["train_loss_curves"].items():
            print(
                f"{m}: train loss, shipped run vs the study's seed {summary['seeds'][0]}: largest per-epoch "
                f"difference {c['max_abs_diff_vs_shipped']}, final {c['final_vs_shipped']}"
            )
        if args.plot:
            plot(summary["train_loss_curves"], args.plot)
    for m, r in summary["models"].items():
        print(f"{m:<9} top-1 {r['mean']:.2f} ± {r['sd']:.2f} over seeds {summary['seeds']}: {r['top1']}")
    for pr in summary["pairs"]:
        print(
            f"{pr['b']} - {pr['a']}: {pr['diff_mean']:+.2f} ± {pr['diff_sd']:.2f} points, t95 {pr['diff_t95']}, "
            f"better on {pr['seeds_b_better']}/{pr['seeds']} seeds (sign test p = {pr['sign_test_p']}), "
            f"McNemar p < 0.05 on {pr['mcnemar_p_below_0.05']}"
        )
    print(summary["reading"])
    if args.json:
        source = {k: report[k] for k in ("command", "commit", "dirty", "date", "data", "pipeline")}
        args.json.write_text(
            json.dumps({**artifact_header(argv, "dsnet.evidence.seedreport"), "source": source, **summary}, indent=1)
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

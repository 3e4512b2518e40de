"""Do the maps depend on the weights? The model-parameter randomisation test (cascading, from the top).

``python -m dsnet.evidence.sanity --data ../shared/data/ilsvrc-val-boxes --json docs/sanity-imagenette.json
--plot docs/sanity-imagenette.png`` follows Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018),
and Quantus's ``MPRT`` (its ``layer_order="top_down"``, cascading: the layers randomised so far stay random).

* Images: the first ``--per-class`` images of every class of ``--data`` (``<wnid>/*.JPEG``), each explained for
  its TRUE class (``TargetPolicy("label", wnid)``) through ``dsnet.cam.service.explain_model``, the very path the
  app uses; methods: every fast one of ``METHODS`` (``slow`` False) unless ``--methods`` says otherwise.
* Randomisation: on a PRIVATE deep copy of each served model (the shared, cached instance is never touched),
  the steps of ``STEPS`` in order, cumulatively: ``fc``; + ``layer4``; + ``layer3``; + ``layer2``; + ``layer1``;
  + the stem (``conv1``, ``bn1``): after the last step no trained number is left. Every state-dict entry of a
  stage is re-initialised the way the network's constructor initialises it, with fresh draws from a generator
  seeded by (``--seed``, step): convolutions ``kaiming_normal_(fan_out, relu)`` (as ``DSNet.__init__``), ``fc`` as
  ``nn.Linear.reset_parameters``, BatchNorm weight 1, bias 0 and its running statistics reset (mean 0, var 1,
  count 0), the shortcut weights W of DSNet / DS2Net blocks (``dense_weight``, ``inner_weight``) 1, their
  initial value; any other module with parameters through its ``reset_parameters``. A stage entry that no rule
  covers is an error, not a silent leftover (``randomise``).
* Similarity of each map with the trained model's map of the same image, method and class: the Spearman rank
  correlation of the flattened maps (``scipy.stats.spearmanr``; a constant map has no ranking: 1 when both
  maps are constant, else 0, and such maps are counted) and SSIM (``skimage.metrics.structural_similarity``,
  ``data_range=1``, on the [0, 1] maps). Per (model, method, step): the mean over images with a 95 % percentile
  bootstrap interval (``dsnet.evidence.stats.bootstrap_ci``); per (model, step) the top-1 accuracy.

The verdict (``RULE``, fixed before any result was seen; written into the JSON): on the mean Spearman
correlation after the LAST step (the whole network randomised), a method

* "fails"  when it is >= 0.5 (``FAILS_AT``): the map hardly changes when every weight is random, so it shows
  the image (or the architecture), not what the model learnt;
* "weak"   when it is in [0.2, 0.5) (``WEAK_AT``);
* "passes" when it is < 0.2.

EigenCAM is class-agnostic by design (the first principal component of layer4); that is not the same as
weight-independence, and it gets no special case here. ``verdicts(path)`` reads only the JSON (no models):
per method, its worst verdict over the models (or one model's), for the app's menu.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dsnet.cam.images import LoadedImage, open_image
from dsnet.cam.service import METHODS, TargetPolicy, explain_model
from dsnet.core.files import atomic_path
from dsnet.core.provenance import artifact_header
from dsnet.data.labelled import LabelledImage, limit_per_class, scan_labelled
from dsnet.evidence import stats
from dsnet.evidence.cli import refused
from dsnet.zoo.loader import DEFAULT_MODELS, ZooModel, load_or_skip

# (step name, the modules it randomises in addition to the earlier steps'), from the output to the input.
STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fc", ("fc",)),
    ("layer4", ("layer4",)),
    ("layer3", ("layer3",)),
    ("layer2", ("layer2",)),
    ("layer1", ("layer1",)),
    ("stem", ("conv1", "bn1")),
)
SEED = 0
FAILS_AT = 0.5  # mean Spearman after full randomisation >= this: "fails"
WEAK_AT = 0.2  # in [WEAK_AT, FAILS_AT): "weak"; below: "passes"
VERDICTS = ("passes", "weak", "fails")  # from best to worst
RULE = {
    "statistic": "mean over images of the Spearman rank correlation between the trained model's map and the map "
    "after the last cascade step (every parameter randomised)",
    "fails_at": FAILS_AT,
    "weak_at": WEAK_AT,
    "text": f"mean Spearman >= {FAILS_AT}: fails (the map hardly depends on the weights); "
    f"{WEAK_AT} <= mean < {FAILS_AT}: weak; < {WEAK_AT}: passes. Fixed before the results were seen.",
}
SHORTCUT_WEIGHTS = ("dense_weight", "inner_weight")  # DSNet / DS2Net's W, initialised to 1 by the constructor


def fast_methods() -> list[str]:
    """The methods of ``METHODS`` that are not slow (the default set)."""
    return [name for name, m in METHODS.items() if not m.slow]


# --- the cascade -------------------------------------------------------------------------------


def _step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for one step, from (seed, step): the same weights on every device and run."""
    state = int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))
    return torch.Generator().manual_seed(state)


def _draw(param: torch.Tensor, init, gen: torch.Generator, **kwargs) -> None:
    """Fill ``param`` from ``init`` drawn on the CPU with ``gen`` (so the draws do not depend on the device)."""
    fresh = torch.empty(param.shape, dtype=torch.float32)
    init(fresh, generator=gen, **kwargs)
    with torch.no_grad():
        param.copy_(fresh)


def _reinitialise(module: nn.Module, gen: torch.Generator) -> set[str]:
    """Re-initialise ``module``'s OWN parameters and buffers as the constructor does; the names it covered."""
    own = [n for n, _ in module.named_parameters(recurse=False)] + [n for n, _ in module.named_buffers(recurse=False)]
    if not own:
        return set()
    if isinstance(module, nn.Conv2d):
        _draw(module.weight, nn.init.kaiming_normal_, gen, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            with torch.no_grad():
                module.bias.zero_()
        return {"weight", "bias"} & set(own)
    if isinstance(module, nn.Linear):  # nn.Linear.reset_parameters, with a private generator
        _draw(module.weight, nn.init.kaiming_uniform_, gen, a=math.sqrt(5))
        if module.bias is not None:
            bound = 1 / math.sqrt(module.in_features) if module.in_features > 0 else 0
            _draw(module.bias, nn.init.uniform_, gen, a=-bound, b=bound)
        return {"weight", "bias"} & set(own)
    if isinstance(module, nn.modules.batchnorm._NormBase):
        module.reset_parameters()  # running statistics reset; affine weight 1, bias 0
        return set(own)
    covered = set()
    for name in SHORTCUT_WEIGHTS:
        param = getattr(module, name, None)
        if isinstance(param, nn.Parameter):
            with torch.no_grad():
                param.fill_(1.0)
            covered.add(name)
    rest = set(own) - covered
    if rest and hasattr(module, "reset_parameters"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            module.reset_parameters()
        covered |= rest
    return covered


def randomise(model: nn.Module, modules: Sequence[str], seed: int = SEED, step: int = 0) -> list[str]:
    """Re-initialise, IN PLACE, every state-dict entry of ``model``'s named submodules; the keys it changed.

    Raises RuntimeError if an entry of those modules is not covered by a rule (see the module docstring)."""
    gen = _step_generator(seed, step)
    state_keys = list(model.state_dict())
    done: list[str] = []
    for root in modules:
        for name, module in model.get_submodule(root).named_modules(prefix=root):
            done += [f"{name}.{local}" for local in sorted(_reinitialise(module, gen))]
        expected = {k for k in state_keys if k.startswith(root + ".")}
        missed = expected - set(done)
        if missed:
            raise RuntimeError(
                f"randomising {root!r} left {len(missed)} entries as they were: {', '.join(sorted(missed)[:6])}"
            )
    return done


def stage_keys(model: nn.Module, steps: Sequence[tuple[str, Sequence[str]]] = STEPS) -> dict[str, list[str]]:
    """Per step, the state-dict keys it randomises; every key belongs to exactly one step (else ValueError)."""
    keys = list(model.state_dict())
    out = {step: [k for k in keys if any(k.startswith(m + ".") for m in modules)] for step, modules in steps}
    owned = [k for ks in out.values() for k in ks]
    if sorted(owned) != sorted(keys):
        stray = sorted(set(keys) - set(owned))
        raise ValueError(f"the steps do not cover every parameter once; not covered: {stray[:6]}")
    return out


def cascade(
    model: nn.Module, seed: int = SEED, steps: Sequence[tuple[str, Sequence[str]]] = STEPS
) -> Iterator[tuple[str, nn.Module]]:
    """A private deep copy of ``model``, randomised one more step at a time: yields (step name, the copy).

    The same copy is yielded every time, with one more stage random; ``model`` itself is never changed."""
    stage_keys(model, steps)  # the steps must cover the whole network
    private = copy.deepcopy(model).eval()
    for index, (name, modules) in enumerate(steps):
        randomise(private, modules, seed, index)
        yield name, private


# --- similarity and verdicts ---------------------------------------------------------------------


def _constant(a: np.ndarray) -> bool:
    return bool(a.size == 0 or np.all(a == a.flat[0]))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two flattened maps; 1 when both are constant, 0 when only one is."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if _constant(a) or _constant(b):
        return 1.0 if _constant(a) and _constant(b) else 0.0
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two [0, 1] maps (``data_range=1``)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64), data_range=1.0))


def verdict(final_spearman: float) -> str:
    """``RULE`` on the mean Spearman after the last step: "fails", "weak" or "passes" ("no data" for nan)."""
    if final_spearman is None or math.isnan(final_spearman):
        return "no data"
    if final_spearman >= FAILS_AT:
        return "fails"
    if final_spearman >= WEAK_AT:
        return "weak"
    return "passes"


def verdicts(path: str | Path, model: str | None = None) -> dict[str, str]:
    """Per method, its verdict in a ``--json`` artifact: ``model``'s, or the worst over the file's models.

    Reads the JSON only (no model is loaded); {} when the file does not exist (no check was run)."""
    path = Path(path)
    if not path.is_file():
        return {}
    results = json.loads(path.read_text())["results"]
    if model is not None:
        results = {model: results[model]} if model in results else {}
    out: dict[str, str] = {}
    for per_method in results.values():
        for method, r in per_method.items():
            v = r["verdict"]
            old = out.get(method)
            if old is None or (v in VERDICTS and (old not in VERDICTS or VERDICTS.index(v) > VERDICTS.index(old))):
                out[method] = v
    return out


mean_ci = stats.mean_interval  # mean and 95 % bootstrap interval over images


# --- the run -------------------------------------------------------------------------------------


def sanity(
    images: Sequence[tuple[LabelledImage, LoadedImage]],
    models: Sequence[ZooModel],
    methods: Sequence[str],
    seed: int = SEED,
    steps: Sequence[tuple[str, Sequence[str]]] = STEPS,
    progress: bool = True,
) -> dict:
    """Every model's cascade on every image and method: the ``results``, ``accuracy`` and ``verdicts`` parts
    of the artifact (see the module docstring)."""
    bar = tqdm(
        total=len(models) * (1 + len(steps)) * len(images) * len(methods),
        desc="maps",
        unit="map",
        disable=not progress,
        mininterval=1 if sys.stderr.isatty() else 30,
    )
    results: dict[str, dict] = {}
    accuracy: dict[str, dict[str, float]] = {}

    def maps(zm: ZooModel, label: str) -> tuple[dict[str, list[np.ndarray]], float]:
        bar.set_postfix_str(f"{zm.name} {label}")
        out: dict[str, list[np.ndarray]] = {m: [] for m in methods}
        correct = 0
        for item, loaded in images:
            for i, method in enumerate(methods):
                r = explain_model(loaded, zm, method, TargetPolicy("label", item.wnid))
                out[method].append(r.cam)
                if i == 0:
                    correct += int(r.top5[0].index == r.explained.index)
                bar.update(1)
        return out, correct / max(1, len(images))

    for zm in models:
        trained, acc = maps(zm, "trained")
        accuracy[zm.name] = {"trained": round(acc, 4)}
        per_method: dict[str, dict] = {m: {"steps": {}} for m in methods}
        for step, private in cascade(zm.model, seed, steps):
            randomised, acc = maps(dataclasses.replace(zm, model=private), f"+{step}")
            accuracy[zm.name][step] = round(acc, 4)
            for m in methods:
                rho = [spearman(a, b) for a, b in zip(trained[m], randomised[m])]
                sim = [ssim(a, b) for a, b in zip(trained[m], randomised[m])]
                constant = sum(_constant(c) for c in randomised[m])
                per_method[m]["steps"][step] = {
                    "spearman": mean_ci(rho),
                    "ssim": mean_ci(sim),
                    "constant_maps": constant,
                }
        last = steps[-1][0]
        for m in methods:
            final = per_method[m]["steps"][last]
            per_method[m].update(
                {
                    "final_spearman": final["spearman"]["mean"],
                    "final_ssim": final["ssim"]["mean"],
                    "verdict": verdict(final["spearman"]["mean"]),
                }
            )
        per_method = {
            m: {k: per_method[m][k] for k in ("verdict", "final_spearman", "final_ssim", "steps")} for m in methods
        }
        results[zm.name] = per_method
        trained_constant = {m: sum(_constant(c) for c in trained[m]) for m in methods}
        if any(trained_constant.values()):
            for m, k in trained_constant.items():
                results[zm.name][m]["trained_constant_maps"] = k
    bar.close()
    by_method = {m: {name: results[name][m]["verdict"] for name in results} for m in methods}
    return {"results": results, "accuracy": accuracy, "verdicts": by_method}


def plot(report: dict, out: Path) -> None:
    """One panel per model: mean Spearman (with its 95 % interval) against the cascade step, a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s["name"] for s in report["steps"]]
    labels = ["trained"] + [f"+{s}" for s in steps]
    models = list(report["results"])
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 5.2), sharey=True, squeeze=False)
    colours = plt.get_cmap("tab10")
    styles = ["-", (0, (5, 3)), (0, (1, 2)), (0, (3, 2, 1, 2)), "-", (0, (6, 2)), (0, (2, 1))]
    markers = "osD^vPX*"
    for ax, name in zip(axes[0], models):
        for i, (method, r) in enumerate(report["results"][name].items()):
            means = [1.0] + [r["steps"][s]["spearman"]["mean"] for s in steps]
            low = [1.0] + [r["steps"][s]["spearman"]["ci95"][0] for s in steps]
            high = [1.0] + [r["steps"][s]["spearman"]["ci95"][1] for s in steps]
            x = range(len(labels))  # methods that coincide (Grad-CAM, XGrad-CAM, HiResCAM under GAP + fc) stay visible
            ax.plot(
                x,
                means,
                marker=markers[i % len(markers)],
                ms=3.5,
                lw=1.4,
                ls=styles[i % len(styles)],
                color=colours(i),
                label=f"{method}: {r['verdict']}",
            )
            ax.fill_between(x, low, high, color=colours(i), alpha=0.10, lw=0)
        for level, style in ((report["rule"]["fails_at"], "--"), (report["rule"]["weak_at"], ":")):
            ax.axhline(level, color="grey", ls=style, lw=1)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(name)
        ax.set_ylim(-0.4, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    axes[0][0].set_ylabel("Spearman vs the trained map (mean, 95 % CI)")
    fig.suptitle(
        f"Cascading parameter randomisation, {report['zoo']} zoo, {report['n_images']} images, true class; "
        f"verdict after +{steps[-1]} (dashed: fails at >= {report['rule']['fails_at']}, "
        f"dotted: weak at >= {report['rule']['weak_at']})",
        fontsize=9,
    )
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


@contextlib.contextmanager
def limited_threads(threads: int) -> Iterator[None]:
    """torch and the BLAS under numpy (EigenCAM's SVDs) limited to ``threads`` while the block runs: on a busy
    machine OpenBLAS's threads wait on each other over tiny matrices (measured 40 x slower on 2 shared cores)."""
    try:
        from threadpoolctl import threadpool_limits  # scikit-learn's, which pytorch-grad-cam needs

        blas = threadpool_limits(threads, user_api="blas")
    except ImportError:
        blas = None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if blas is not None:
            blas.restore_original_limits()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dsnet.evidence.sanity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="labelled images (<wnid>/*.JPEG or <wnid>_*.JPEG)")
    p.add_argument("--zoo", default="imagenette")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo model names")
    p.add_argument("--per-class", type=int, default=5, help="images per class (0: all)")
    p.add_argument("--methods", help=f"comma-separated (default: the fast ones, {','.join(fast_methods())})")
    p.add_argument("--seed", type=int, default=SEED, help="seed of the re-initialisation")
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and BLAS (default 1; 0: as they are)")
    p.add_argument("--json", type=Path, help="write the report (with the command, commit and date)")
    p.add_argument("--plot", type=Path, help="Spearman against the cascade step as a PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    header = artifact_header(argv, "dsnet.evidence.sanity")
    methods = args.methods.split(",") if args.methods else fast_methods()
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    with limited_threads(args.threads) if args.threads > 0 else contextlib.nullcontext():
        return _run(args, header, methods)


def _run(args: argparse.Namespace, header: dict, methods: list[str]) -> int:
    started = time.perf_counter()
    models = load_or_skip(args.zoo, args.models.split(","), args.device)
    if not models:
        return refused(f"no model of zoo {args.zoo!r} can be loaded")
    items = limit_per_class(scan_labelled(args.data), args.per_class or None)
    usable = [it for it in items if all(it.wnid in zm.labels.wnids for zm in models)]
    images = [(it, open_image(it.path)) for it in usable]
    report = {
        **header,
        "zoo": args.zoo,
        "data": str(args.data),
        "per_class": args.per_class,
        "n_images": len(images),
        "skipped_images": len(items) - len(usable),
        "images": [
            str(it.path.relative_to(args.data)) if it.path.is_relative_to(args.data) else str(it.path)
            for it, _ in images
        ],
        "target": "the true class (TargetPolicy('label', wnid))",
        "methods": methods,
        "models": [zm.name for zm in models],
        "seed": args.seed,
        "steps": [{"name": s, "randomised": list(mods)} for s, mods in STEPS],
        "randomisation": "cascading from the top on a private deep copy of each model; every state-dict entry "
        "of a step's modules re-initialised as the constructor does (conv kaiming_normal "
        "fan_out, fc nn.Linear's default, BatchNorm 1 / 0 with running statistics reset, "
        "shortcut weights W 1), fresh draws seeded by (seed, step)",
        "similarity": {
            "spearman": "scipy.stats.spearmanr of the flattened maps (1 if both maps are constant, 0 if only one is)",
            "ssim": "skimage.metrics.structural_similarity, data_range=1, on the [0, 1] maps",
            "interval": "95 % percentile bootstrap over images (dsnet.evidence.stats.bootstrap_ci)",
        },
        "rule": RULE,
    }
    report.update(sanity(images, models, methods, args.seed, progress=not args.quiet))
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["threads"] = torch.get_num_threads()
    print(f"{len(images)} images, {len(methods)} methods, {len(models)} models, {report['seconds']:.0f} s")
    print(f"{'model':<10} {'method':<13} {'spearman':>8} {'ssim':>6}  verdict  (after randomising every stage)")
    for name, per_method in report["results"].items():
        for m, r in per_method.items():
            print(f"{name:<10} {m:<13} {r['final_spearman']:>8.3f} {r['final_ssim']:>6.3f}  {r['verdict']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

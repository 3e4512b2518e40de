"""The Grad-CAM service against its floor and against the stock pytorch-grad-cam recipe.

Full-width 1000-class ResNet50 + DSNet50 + DS2Net50 (random weights: timing only), one 224 px
image, CPU (or CUDA), interleaved rounds, medians:
- floor: three plain ``inference_mode`` forwards of the same models on the preprocessed image;
- service: ``dsnet.cam.service.explain`` for the three (decode + preprocessing + top-5 + CAM + overlay);
- stock: per model, a GradCAM object built per call as in pytorch-grad-cam's README, plus a
  separate forward for the top-5, plus preprocessing and overlay;
- AblationCAM relative to GradCAM in the service (its ablations re-run only pool + fc). Stock
  AblationCAM re-runs the whole network for every batch of 32 ablated channels (64 batches at
  full width: about 10 minutes per model on this CPU), so it is left out of the rounds.
The heap keeps freed memory, as in the app (``dsnet.core.allocator``).

    python benchmarks/cam.py [--rounds 10] [--threads 2] [--device cpu|cuda]
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's per-batch progress bars

import argparse
import statistics
import time
from pathlib import Path

import pytorch_grad_cam as pgc
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import dsnet
from dsnet.cam.images import model_view, open_image, overlay, to_tensor
from dsnet.cam.service import explain
from dsnet.core.allocator import retain_freed_memory
from dsnet.zoo.loader import ZooModel
from dsnet.zoo.manifest import load_manifest

MODELS = ("resnet50", "dsnet50", "ds2net50")
FLOOR, SERVICE = "floor: 3 inference forwards", "service: explain (GradCAM)"
STOCK, ABLATION = "stock GradCAM recipe", "service: explain (AblationCAM)"


def default_image() -> str:
    return str(Path(os.environ.get("DSNET_DATA", "../shared/data")) / "imagenet-samples" / "n03445777_golf_ball.JPEG")


def measure(device: str | torch.device, rounds: int = 10, image_path: str | None = None) -> dict:
    """Interleaved rounds of the four cases; times (seconds) per case, their medians and the ratios."""
    device = torch.device(device)
    manifest = load_manifest()
    torch.manual_seed(0)
    zoo = []
    for name in MODELS:
        entry = manifest.entry("imagenet", name)
        zoo.append(
            ZooModel("imagenet", name, dsnet.get_model(name).eval().to(device), entry, manifest.labels(entry), device)
        )
    image = open_image(image_path or default_image())
    pre = zoo[0].entry.preprocessing

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def floor():
        x = to_tensor(model_view(image.image, pre), pre).to(device)
        with torch.inference_mode():
            for zm in zoo:
                zm.model(x)

    def service(method="gradcam"):
        explain(image, zoo, method=method)

    def stock():
        view = model_view(image.image, pre)
        x = to_tensor(view, pre).to(device)
        for zm in zoo:
            with torch.no_grad():
                probs = zm.model(x).softmax(1)[0]
            top5 = probs.topk(5)
            with pgc.GradCAM(model=zm.model, target_layers=[zm.model.layer4]) as cam:
                grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(top5.indices[0]))])[0]
            overlay(view, grayscale)
            for prm in zm.model.parameters():  # the stock call leaves .grad filled; reset like a server would
                prm.grad = None

    cases = {FLOOR: floor, SERVICE: service, STOCK: stock, ABLATION: lambda: service("ablationcam")}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():  # warm-up
        fn()
    for r in range(rounds):
        for label, fn in cases.items():
            if label == ABLATION and r >= max(2, rounds // 3):
                continue
            sync()
            started = time.perf_counter()
            fn()
            sync()
            times[label].append(time.perf_counter() - started)
    n = min(len(times[ABLATION]), len(times[FLOOR]))
    ratio = lambda a, b, k=None: statistics.median(x / y for x, y in zip(times[a][:k], times[b][:k]))
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rounds": rounds,
        "image": str(image_path or default_image()),
        "times_s": times,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "service_over_floor": ratio(SERVICE, FLOOR),
        "stock_over_service": ratio(STOCK, SERVICE),
        "ablation_over_gradcam": ratio(ABLATION, SERVICE, n),
    }


def report(m: dict) -> str:
    lines = [
        f"device {m['device']}, threads {m['threads']}, torch {m['torch']}, {m['rounds']} rounds, "
        f"full-width 1000-class models, one 224 px image"
    ]
    lines += [f"{k:<34} {1000 * v:>9.1f} ms (median of {len(m['times_s'][k])})" for k, v in m["median_s"].items()]
    lines += [
        f"service / floor                    {m['service_over_floor']:.3f}  (target <= 1.25)",
        f"stock / service (speed-up)         {m['stock_over_service']:.2f}x  (target >= 2.5x)",
        f"AblationCAM / GradCAM, service     {m['ablation_over_gradcam']:.2f}x",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--image", default=None, help="default: an imagenet-samples photo")
    args = p.parse_args()
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    print(report(measure(args.device, args.rounds, args.image)))


if __name__ == "__main__":
    main()

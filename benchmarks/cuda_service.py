"""The app's Grad-CAM service on CUDA, in one run (issue 19, part 1); writes one JSON file.

1. agreement: for the shipped imagenette zoo and full-width 1000-class random models (seeded) of
   ResNet50 / DSNet50 / DS2Net50, ``dsnet.cam.service.explain_model`` on the CPU and on DEVICE (the same
   weights, the same image, the same explained class: the CPU's top-1): top-5 classes, top-5
   probabilities and GradCAM maps, max abs differences against stated tolerances, twice: as served
   (PyTorch's defaults: TF32 convolutions on CUDA) and with TF32 off (full fp32);
2. speed: ``benchmarks/cam.py``'s measurement on DEVICE (service / floor, stock / service, batch 1);
3. the app: ``python app.py`` started as is (only GRADIO_SERVER_PORT set), one request through
   gradio_client, and whether each column's caption names DEVICE.

With ``--device cpu`` (a machine without a GPU) part 1 is skipped with a note and parts 2-3 run on
the CPU, to test this script. The JSON is rewritten after every part: a run cut short keeps what
finished.

    python benchmarks/cuda_service.py --out service.json [--device cuda] [--rounds 30] [--image PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import dsnet  # noqa: E402
from dsnet.cam.images import open_image  # noqa: E402
from dsnet.cam.service import TargetPolicy, explain_model  # noqa: E402
from dsnet.core.allocator import retain_freed_memory  # noqa: E402
from dsnet.core.files import free_port, wait_until_serving  # noqa: E402
from dsnet.core.provenance import revision  # noqa: E402
from dsnet.zoo import loader as zoo_mod  # noqa: E402
from dsnet.zoo.loader import ZooModel  # noqa: E402
from dsnet.zoo.manifest import load_manifest  # noqa: E402

MODELS = ("resnet50", "dsnet50", "ds2net50")
# Tolerances (max abs difference, CPU vs DEVICE). Probabilities are in [0, 1]; maps are min-max
# normalised to [0, 1] by pytorch-grad-cam. TF32 rounds conv inputs to a 10-bit mantissa, so
# "as served" gets a looser bound than fp32. Top-5 classes must match, except where two neighbours
# are a near tie on the CPU (probabilities closer than the probability tolerance).
TOLERANCE = {"tf32": {"prob": 5e-3, "cam": 5e-2}, "fp32": {"prob": 1e-4, "cam": 2e-3}}


def repo_image() -> str:
    """A photo for the requests: the app's first example photo (app/examples), else the example photo
    that ships with Gradio (present wherever the app runs)."""
    photos = sorted(p for p in (ROOT / "app").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if photos:
        return str(photos[0])
    from gradio.media import get_image

    return get_image("cheetah.jpg")


def write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    os.replace(tmp, out)


def set_tf32(on: bool) -> None:
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def compare(cpu, dev, tol: dict) -> dict:
    """Top-5 and map differences of two CamResults of the same model, image and class."""
    ci = [p.index for p in cpu.top5]
    di = [p.index for p in dev.top5]
    cp = np.array([p.probability for p in cpu.top5])
    dp = {p.index: p.probability for p in dev.top5}
    prob_diff = float(max(abs(p.probability - dp[p.index]) for p in cpu.top5 if p.index in dp)) if dp else 1.0
    # a swap is allowed only between CPU neighbours closer than the tolerance
    order_ok = all(
        a == b
        or (k + 1 < len(cp) and abs(cp[k] - cp[k + 1]) < tol["prob"])
        or (k > 0 and abs(cp[k] - cp[k - 1]) < tol["prob"])
        for k, (a, b) in enumerate(zip(ci, di))
    )
    cam_diff = float(np.abs(cpu.cam - dev.cam).max())
    return {
        "top5_cpu": ci,
        "top5_device": di,
        "top5_equal": ci == di,
        "top5_ok": order_ok,
        "top5_prob_max_abs_diff": prob_diff,
        "cam_max_abs_diff": cam_diff,
        "cam_mean_abs_diff": float(np.abs(cpu.cam - dev.cam).mean()),
        "explained": cpu.explained.index,
        "devices": [cpu.device, dev.device],
        "pass": bool(order_ok and prob_diff <= tol["prob"] and cam_diff <= tol["cam"]),
    }


def random_pair(name: str, device: torch.device, manifest) -> tuple[ZooModel, ZooModel]:
    entry = manifest.entry("imagenet", name)
    torch.manual_seed(0)
    model = dsnet.get_model(name).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    twin = dsnet.get_model(name).eval()
    twin.load_state_dict(state)
    labels = manifest.labels(entry)
    return (
        ZooModel("imagenet", name, model, entry, labels, torch.device("cpu")),
        ZooModel("imagenet", name, twin.to(device), entry, labels, device),
    )


def agreement(device: torch.device, image_path: str) -> dict:
    manifest = load_manifest()
    image = open_image(image_path)
    out: dict = {"image": image_path, "tolerance": TOLERANCE, "cases": {}}
    pairs = [
        (
            f"imagenette/{n}",
            lambda n=n: (zoo_mod.load("imagenette", n, device="cpu"), zoo_mod.load("imagenette", n, device=device)),
        )
        for n in MODELS
    ]
    pairs += [(f"random-1000/{n}", lambda n=n: random_pair(n, device, manifest)) for n in MODELS]
    for label, make in pairs:
        cpu_zm, dev_zm = make()
        assert cpu_zm.device.type == "cpu" and dev_zm.device.type == device.type
        cpu = explain_model(image, cpu_zm)  # the CPU's top-1; the device explains the same class
        policy = TargetPolicy("class", cpu.explained.index)
        case = {}
        for mode, tf32 in (("tf32", True), ("fp32", False)):
            set_tf32(tf32)
            dev = explain_model(image, dev_zm, target=policy)
            dev_top1 = explain_model(image, dev_zm)  # its own top-1, as the app would explain it
            case[mode] = {
                **compare(cpu, dev, TOLERANCE[mode]),
                "device_top1_equals_cpu_top1": dev_top1.explained.index == cpu.explained.index,
            }
        set_tf32(True)
        case["pass"] = case["tf32"]["pass"] and case["fp32"]["pass"]
        out["cases"][label] = case
        print(
            f"{label:<22} tf32: probs {case['tf32']['top5_prob_max_abs_diff']:.2e} cam "
            f"{case['tf32']['cam_max_abs_diff']:.2e}  fp32: probs {case['fp32']['top5_prob_max_abs_diff']:.2e} cam "
            f"{case['fp32']['cam_max_abs_diff']:.2e}  {'pass' if case['pass'] else 'FAIL'}",
            flush=True,
        )
    out["pass"] = all(c["pass"] for c in out["cases"].values())
    return out


def app_request(device: torch.device, image_path: str, startup_limit: float, log_path: Path) -> dict:
    """``python app.py`` as is, one request through gradio_client; the captions must name the device."""
    from gradio_client import Client, handle_file

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port)}
    url = f"http://127.0.0.1:{port}/"
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_serving(proc, url, startup_limit, poll=0.5)
            serving = time.monotonic() - started
            client = Client(url, verbose=False)
            # the /explain endpoint's own parameters: the photo for the image, the imagenette zoo, and
            # every other parameter at its default (each model's top-1, GradCAM, ...)
            params = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/explain"][
                "parameters"
            ]
            kwargs = {}
            for prm in params:
                name = prm["parameter_name"]
                if name == "image" or prm["component"].lower().endswith("image"):
                    kwargs[name] = handle_file(image_path)
                elif name == "zoo":
                    kwargs[name] = "imagenette"
                elif prm.get("parameter_has_default"):
                    kwargs[name] = prm.get("parameter_default")
                else:
                    kwargs[name] = None
            asked = time.monotonic()
            out = client.predict(**kwargs, api_name="/explain")
            seconds = time.monotonic() - asked
            captions = [o for o in out if isinstance(o, str) and " ms · " in o]  # "<n> ms · gradcam · <device>"
            top5 = [[c["label"] for c in o["confidences"]] for o in out if isinstance(o, dict) and "confidences" in o]
            named = [f"· {device.type}" in c for c in captions]
            return {
                "url": url,
                "image": image_path,
                "seconds_to_serve": round(serving, 1),
                "request_seconds": round(seconds, 2),
                "outputs": len(out),
                "parameters": {k: str(v) for k, v in kwargs.items()},
                "captions": captions,
                "top5": top5,
                "caption_names_device": named,
                "pass": len(captions) == len(MODELS) and all(named),
            }
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the JSON file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=30, help="benchmarks/cam.py rounds")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--image", help="the photo for parts 1 and 3 (default: the app's first example photo)")
    p.add_argument("--bench-image", help="the photo for part 2 (default: benchmarks/cam.py's, if present)")
    p.add_argument("--parts", default="agreement,speed,app")
    p.add_argument("--startup-limit", type=float, default=240)
    args = p.parse_args()
    retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    image = args.image or repo_image()
    parts = args.parts.split(",")
    result: dict = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "cpu_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "commit": revision(ROOT).commit or None,
        "argv": sys.argv[1:],
        "notes": [],
    }
    try:
        import gradio

        result["gradio"] = gradio.__version__
    except ImportError:
        pass
    write(args.out, result)

    def part(name: str, fn) -> None:
        if name not in parts:
            return
        started = time.monotonic()
        try:
            result[name] = fn()
        except Exception as e:
            result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(), "pass": False}
            print(result[name]["traceback"], file=sys.stderr, flush=True)
        result[name]["seconds"] = round(time.monotonic() - started, 1)
        write(args.out, result)
        print(
            f"{name}: {'pass' if result[name].get('pass', True) else 'FAIL'} ({result[name]['seconds']} s)", flush=True
        )

    if device.type == "cpu":
        result["notes"].append("device cpu: the CPU-vs-device comparison (part 1) is skipped; parts 2-3 ran on the CPU")
        parts = [x for x in parts if x != "agreement"]
    part("agreement", lambda: agreement(device, image))

    def speed() -> dict:
        import cam as cam_bench  # benchmarks/cam.py

        bench_image = args.bench_image or (
            cam_bench.default_image() if Path(cam_bench.default_image()).is_file() else image
        )
        m = cam_bench.measure(device, args.rounds, bench_image)
        print(cam_bench.report(m), flush=True)
        return m

    part("speed", speed)
    part("app", lambda: app_request(device, image, args.startup_limit, args.out.with_name("app.log")))
    result["pass"] = all(result[k].get("pass", True) for k in ("agreement", "speed", "app") if k in result)
    write(args.out, result)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The Gradio UI. It only wires widgets to the Grad-CAM service (``dsnet.cam``) and the zoo."""
from __future__ import annotations

import os
import random
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from dsnet.allocator import retain_freed_memory
from dsnet.cam import METHODS, CamResult, ModelFailure, TargetPolicy, explain_zoo
from dsnet.data import scan_labelled
from dsnet.images import MAX_ASPECT, MAX_BYTES, MAX_PIXELS, ImageError, enlarge, open_image
from dsnet.manifest import load_manifest
from dsnet.render import comparison
from dsnet.zoo import DEFAULT_MODELS

# Serving settings, chosen on purpose (README, "Serving settings").
QUEUE_SIZE = int(os.environ.get("DSNET_QUEUE_SIZE", 24))  # waiting requests; more are refused as busy
CONCURRENCY = int(os.environ.get("DSNET_CONCURRENCY", 2))  # requests computed at once (2 cores)
TIME_LIMIT = float(os.environ.get("DSNET_TIME_LIMIT", 120))  # seconds per model for expensive methods
GALLERY_SIZE = 40
DISPLAY_SIDE = 256  # heatmaps are shown at least this large (the imagenette models see 128 px)
# The classes of the paper's Figure 5: obelisk, knee pad, airship, bittern, langur, jacamar, wolf spider,
# redshank, black widow, ground beetle.
FIGURE5_WNIDS = ("n03837869", "n03623198", "n02692877", "n02011460", "n02488291", "n01843065", "n01775062",
                 "n02028035", "n01774384", "n02167151")
TARGET_CHOICES = {"each model's top-1": "top1", "one class for all": "class", "the true class": "label"}


class RawImage(gr.Image):
    """gr.Image whose upload reaches the handler as the raw file, undecoded.

    gr.Image would decode (and re-encode) every upload before the handler sees it, with no size
    limit and a generic error for bad files; here ``dsnet.images.open_image`` does that, safely.
    """

    def get_block_name(self) -> str:
        return "image"  # the same front-end component as gr.Image

    def preprocess(self, payload):
        if payload is None:
            return None
        return payload.path or payload.url  # an API client may send the bytes as a data: URL


@dataclass(frozen=True)
class GalleryItem:
    path: str
    caption: str
    wnid: str | None


def gallery_items(folder: str | None, zoo: str) -> list[GalleryItem]:
    """A labelled folder's images (Figure 5's classes first for the imagenet zoo), else gradio's photos."""
    if folder:
        names: dict[str, str] = {}
        for ls in load_manifest().label_sets.values():
            names.update(zip(ls.wnids, ls.names))
        items = scan_labelled(folder)
        first = [it for it in items if it.wnid in FIGURE5_WNIDS] if zoo == "imagenet" else []
        rest = [it for it in items if it not in first]
        random.Random(0).shuffle(rest)  # a spread of classes, the same on every start
        return [GalleryItem(str(it.path), names.get(it.wnid, it.wnid), it.wnid) for it in (first + rest)[:GALLERY_SIZE]]
    from gradio.media import get_image
    return [GalleryItem(get_image(n), Path(n).stem, None) for n in ("cheetah.jpg", "lion.jpg", "bus.png", "tower.jpg")]


def _caption(r: CamResult) -> str:
    lines = [f"**Explains:** {r.explained.name} ({100 * r.explained.probability:.1f}%)",
             f"**Time:** {1000 * r.seconds:.0f} ms · {r.method}"]
    if r.faithfulness:
        f = r.faithfulness
        lines.append(f"**Focus:** top-10% mass {f.top10_mass:.2f} · entropy {f.entropy:.3f}  \n"
                     f"**Faithfulness:** confidence change {f.confidence_change:+.3f} · ROAD {f.road:+.3f}")
    lines += [f"_{n}_" for n in r.notes]
    return "  \n".join(lines)


def explain_handler(image_path, zoo, method, target_mode, target_class, opacity, with_metrics, true_wnid,
                    progress=gr.Progress(track_tqdm=True)):
    """Validate, then yield the three columns as each model finishes (streaming)."""
    if not image_path:
        raise gr.Error("Upload an image or pick one from the gallery first.")
    if method not in METHODS:
        raise gr.Error(f"Unknown CAM method {method!r}; choose one of {', '.join(METHODS)}.")
    try:
        manifest = load_manifest()
        manifest.zoo(zoo)  # unknown zoo: a clear error before anything is decoded
        image = open_image(image_path)
        policy = {"top1": lambda: TargetPolicy(), "class": lambda: TargetPolicy("class", target_class),
                  "label": lambda: TargetPolicy.parse("label", true_wnid or None)}[TARGET_CHOICES.get(target_mode, target_mode)]()
        if policy.kind == "class":
            if not target_class:
                raise ValueError("pick the class to explain")
            for entry in manifest.zoo(zoo).entries.values():  # fail before any model runs
                manifest.labels(entry).index(target_class)
        opacity = float(opacity)
    except KeyError:
        raise gr.Error(f"Unknown target mode {target_mode!r}; choose one of {', '.join(TARGET_CHOICES)}.")
    except (ImageError, ValueError, TypeError) as e:
        raise gr.Error(str(e))
    slow = METHODS[method].whole_network or method == "ablationcam"
    columns: list = [None, "_waiting…_", None] * len(DEFAULT_MODELS)
    results: list[CamResult] = []
    progress(0, desc=METHODS[method].cost if slow else "computing")
    stream = explain_zoo(image, zoo, DEFAULT_MODELS, method, policy, opacity, bool(with_metrics),
                         TIME_LIMIT if slow else None)
    for i, item in enumerate(stream):
        if isinstance(item, ModelFailure):
            title = "Not available." if item.unavailable else "Failed:"
            columns[3 * i: 3 * i + 3] = [None, f"**{title}** {item.reason}", None]
        else:
            results.append(item)
            top5 = {p.name: p.probability for p in item.top5}
            columns[3 * i: 3 * i + 3] = [enlarge(item.overlay, DISPLAY_SIDE), _caption(item), top5]
        progress((i + 1) / len(DEFAULT_MODELS), desc=f"{DEFAULT_MODELS[i]} done")
        yield *columns, None
    yield *columns, save_download(comparison(results), f"dsnet-{zoo}-{method}") if results else None


DOWNLOADS = Path(tempfile.gettempdir()) / f"dsnet-downloads-{os.getpid()}"


def save_download(image, stem: str, keep_seconds: float = 900) -> str:
    """Write a PNG for the download button; files older than ``keep_seconds`` are removed."""
    DOWNLOADS.mkdir(exist_ok=True)
    now = time.time()
    for old in DOWNLOADS.glob("*.png"):
        if now - old.stat().st_mtime > keep_seconds:
            old.unlink(missing_ok=True)
    path = DOWNLOADS / f"{stem}-{uuid.uuid4().hex[:12]}.png"
    image.save(path)
    return str(path)


def build_app(gallery_dir: str | None = None, zoo: str = "imagenette") -> gr.Blocks:
    manifest = load_manifest()
    gallery_dir = gallery_dir or os.environ.get("DSNET_GALLERY")
    items = gallery_items(gallery_dir, zoo)

    # Uploads and outputs in Gradio's cache are deleted once older than DSNET_CACHE_SECONDS (an hour).
    ttl = int(os.environ.get("DSNET_CACHE_SECONDS", 3600))
    with gr.Blocks(title="DSNet Explain", delete_cache=(ttl, ttl)) as demo:
        gr.Markdown("# DSNet Explain\nWhere do **ResNet50**, **DSNet50** and **DS2Net50** look? "
                    "Upload an image or pick one below; each model's class activation map and top-5 appear "
                    "side by side ([paper](https://arxiv.org/abs/2010.12496)).")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                image = RawImage(type="filepath", label="Image", sources=["upload", "clipboard", "webcam"],
                                 height=300)
                true_wnid = gr.Textbox(label="True class (wnid, from the gallery)", interactive=False,
                                       placeholder="unknown for uploads")
                gallery = gr.Gallery([(it.path, it.caption) for it in items], label="Examples", columns=5,
                                     height=260, allow_preview=False)
            with gr.Column(scale=2):
                with gr.Row():
                    zoo_box = gr.Dropdown(list(manifest.zoos), value=zoo, label="Zoo")
                    method = gr.Dropdown(list(METHODS), value="gradcam", label="CAM method")
                    target_mode = gr.Radio(list(TARGET_CHOICES), value="each model's top-1", label="Explain")
                with gr.Row():
                    target_class = gr.Dropdown(_class_names(manifest, zoo), label="Class (searchable)",
                                               filterable=True, value=None, allow_custom_value=True,
                                               info="a name, an index or a wnid")
                    opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Heatmap opacity")
                    with_metrics = gr.Checkbox(label="Faithfulness numbers (slower)")
                method_cost = gr.Markdown(f"_{METHODS['gradcam'].cost}_")
                gr.Markdown(f"<small>Images up to {MAX_BYTES // 2**20} MB, {MAX_PIXELS // 10**6} MP, aspect ratio "
                            f"{MAX_ASPECT:.0f}:1. Nothing you upload is kept.</small>")
                run = gr.Button("Explain", variant="primary")
                outputs = []
                with gr.Row(equal_height=True):
                    for name in DEFAULT_MODELS:
                        with gr.Column(min_width=200):
                            outputs += [gr.Image(label=name, type="numpy", format="png", interactive=False, height=260),
                                        gr.Markdown(),
                                        gr.Label(num_top_classes=5, label=f"{name} top-5")]
                download = gr.DownloadButton("Download the comparison (PNG)")

        def pick(evt: gr.SelectData):
            it = items[evt.index]
            return it.path, it.wnid or ""

        gallery.select(pick, None, [image, true_wnid], api_name=False)
        image.upload(lambda: "", None, true_wnid, api_name=False)
        zoo_box.change(lambda z: gr.Dropdown(choices=_class_names(manifest, z), value=None), zoo_box, target_class,
                       api_name=False)
        method.change(lambda m: f"_{METHODS[m].cost}_", method, method_cost, api_name=False)
        run.click(explain_handler, [image, zoo_box, method, target_mode, target_class, opacity, with_metrics, true_wnid],
                  outputs + [download], api_name="explain")
    return demo


def _class_names(manifest, zoo: str) -> list[str]:
    entries = list(manifest.zoo(zoo).entries.values())
    return list(manifest.label_sets[entries[0].labels].names) if entries else []


def launch(demo: gr.Blocks, **kwargs):
    """Queue bound, concurrency, upload limit and visible errors, chosen on purpose; a heap that
    keeps freed memory (no page faults per request)."""
    retain_freed_memory()
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return demo.launch(max_file_size=MAX_BYTES, show_error=True, **kwargs)


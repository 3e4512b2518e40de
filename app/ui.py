"""The Gradio UI. It wires widgets to the Grad-CAM service (``dsnet.cam.service``), the examples and the guards.

Data path of a request: the image payload goes through ``Uploads.take`` (uploads, data: URLs) or the
example set (by id), then ``dsnet.cam.images.open_image``; the parameters through ``parse_params``; then
``dsnet.cam.service.explain_zoo`` streams one result per model. The page keeps the last results in a
per-session state, so moving the opacity slider re-blends the maps without running a model.
"""
from __future__ import annotations

import logging
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, fields, replace

import gradio as gr

from dsnet.core.allocator import retain_freed_memory
from dsnet.cam.service import METHODS, CamResult, ModelFailure, explain_zoo, grad_cam_ready
from dsnet.cam.images import (MAX_ASPECT, MAX_BYTES, MAX_PIXELS, ImageError, LoadedImage, difference_overlay,
                              draw_boxes, enlarge, open_image, overlay, signed_difference)
from dsnet.cam.localisation import Box, MapScore, boxes_to_view, score_map
from dsnet.zoo.manifest import LabelSet, Manifest, load_manifest
from dsnet.cam.service import comparison
from dsnet.zoo.loader import DEFAULT_MODELS, entry_status, load_available

from .evidence import evidence_panel, method_label, sanity_verdicts
from .examples import ExampleSet, load_examples
from .outputs import publish
from .params import OWN_IMAGE_TARGETS, TARGETS, ExplainParams, ParameterError, parse_opacity, parse_params, target_policy
from .zerogpu import on_gpu, on_zerogpu, serving_device
from .security import (MAX_BODY_BYTES, ClientLimit, PublicGate, Uploads, env_number, shape_inputs,
                       sweep_upload_folder)

log = logging.getLogger("dsnet.app")


@dataclass(frozen=True)
class ServingSettings:
    """Serving limits, chosen on purpose (README, "Serving settings"); each has an environment variable."""

    queue_size: int = 24  # DSNET_QUEUE_SIZE: waiting requests for everyone; more are refused as busy
    concurrency: int = 2  # DSNET_CONCURRENCY: requests computed at once (two cores)
    per_client: int = 3  # DSNET_PER_CLIENT: queued + running requests per visitor (session and IP)
    # DSNET_TRUSTED_PROXIES: X-Forwarded-For entries added by proxies we trust: 1 on a Space (its proxy
    # adds one), 0 elsewhere (a client could otherwise forge its address)
    trusted_proxies: int = 1 if os.environ.get("SPACE_ID") else 0
    upload_mb_per_client: int = 100  # DSNET_UPLOAD_MB_PER_CLIENT: upload bytes per visitor per cache_seconds
    upload_mb_total: int = 1000  # DSNET_UPLOAD_MB_TOTAL: upload bytes for everyone per cache_seconds
    upload_files_per_client: int = 200  # DSNET_UPLOAD_FILES_PER_CLIENT: images per visitor per cache_seconds (10x that for everyone)
    time_limit: float = 120  # DSNET_TIME_LIMIT: seconds per model for AblationCAM / ScoreCAM
    cache_seconds: int = 600  # DSNET_CACHE_SECONDS: outputs and unused uploads are deleted after this

    @classmethod
    def from_env(cls) -> "ServingSettings":
        """Each field from DSNET_<FIELD NAME>, else its default."""
        defaults = cls()
        return cls(**{f.name: env_number(f"DSNET_{f.name.upper()}", getattr(defaults, f.name), type(getattr(defaults, f.name)))
                      for f in fields(cls)})


SETTINGS = ServingSettings.from_env()
DISPLAY_SIDE = 256  # maps are shown at least this large (the imagenette models see 160 px)
DOWNLOAD_TILE = 320
DIFFERENCES = (("dsnet50", "resnet50"), ("ds2net50", "resnet50"))  # (a, b): where a looks and b does not
# status, model view, (heatmap, summary, top-5) per model, download, then (added later, so the API's first
# outputs kept their places) one difference view per pair and the localisation numbers
DOWNLOAD = 2 + 3 * len(DEFAULT_MODELS)  # the download's place among the outputs
N_OUT = DOWNLOAD + 1 + len(DIFFERENCES) + 1
# Jet, as pytorch-grad-cam's show_cam_on_image colours the maps (OpenCV's COLORMAP_JET).
COLOUR_SCALE = ("<div style='display:flex;align-items:center;gap:8px;font-size:0.85em'>"
                "<span>low</span><div style='flex:1;height:12px;border-radius:3px;background:linear-gradient("
                "to right,#00007f,#0000ff,#007fff,#00ffff,#7fff7f,#ffff00,#ff7f00,#ff0000,#7f0000)'></div>"
                "<span>high</span></div><div style='font-size:0.8em;opacity:0.75'>how much each region raised the "
                "explained class's score (each map is scaled to its own maximum)</div>")
DIFFERENCE_SCALE = ("<div style='display:flex;align-items:center;gap:8px;font-size:0.85em'>"
                    "<span>ResNet50 looks here more</span><div style='flex:1;height:12px;border-radius:3px;"
                    "background:linear-gradient(to right,#053061,#4393c3,#f7f7f7,#d6604d,#67001f)'></div>"
                    "<span>DSNet looks here more</span></div><div style='font-size:0.8em;opacity:0.75'>the "
                    "difference of the two maps, each scaled to [0, 1]; the photo shows through where they agree"
                    "</div>")


class RawInput:
    """Mixin: the component hands its raw payload to the handler, which validates it (``params``)."""

    def get_block_name(self) -> str:
        return type(self).__mro__[2].__name__.lower()  # the same front-end component as the Gradio base

    def preprocess(self, payload):
        return payload


class RawImage(RawInput, gr.Image):
    """gr.Image whose payload reaches the handler undecoded: ``Uploads.take`` decides what is accepted."""


class RawDropdown(RawInput, gr.Dropdown):
    pass


class RawRadio(RawInput, gr.Radio):
    pass


class RawCheckbox(RawInput, gr.Checkbox):
    pass


class RawSlider(RawInput, gr.Slider):
    pass


@dataclass
class Session:
    """One visitor's page: the image last explained (bytes, never a file) and the last results."""

    upload_path: str | None = None  # the upload this image came from (deleted from disk already)
    upload_data: bytes | str | None = None
    results: dict[str, CamResult] = field(default_factory=dict)
    params: ExplainParams | None = None  # the last run's (for the download after an opacity change)
    view_boxes: dict[str, list[Box]] = field(default_factory=dict)  # per model: the example's boxes in its view
    generation: int = 0  # +1 for every run and every new image: a run whose image was replaced stops
    busy: bool = False  # a run is on


@dataclass(frozen=True)
class Outcome:
    """What the three columns show; ``values()`` is the order of the output components."""

    status: str = ""
    view: object = None
    columns: tuple = tuple((None, "", None) for _ in DEFAULT_MODELS)
    download: str | None = None
    differences: tuple = tuple(None for _ in DIFFERENCES)
    localisation: dict | None = None  # per model, for an example with object boxes

    def values(self) -> list:
        return [self.status, self.view, *[v for col in self.columns for v in col], self.download, *self.differences,
                self.localisation]


def zoo_label(manifest: Manifest, zoo: str) -> str:
    """The zoo selector's text: how many classes, which models it has, what downloads on first use."""
    entries = list(manifest.zoo(zoo).entries.values())
    n = len(manifest.labels(entries[0]).names) if entries else 0
    ready, download, none = [], [], []
    for e in entries:
        st = entry_status(zoo, e, manifest.path.parent)
        (ready if st.verified else download if e.unavailable is None and (e.sources.hub or e.sources.url)
         else none).append(e.name)
    parts = [f"{zoo} ({n} classes)"]
    if ready:
        parts.append(", ".join(ready))
    if download:
        parts.append(f"{', '.join(download)} downloads on first use")
    if none:
        parts.append(f"no weights yet: {', '.join(none)}")
    return " · ".join(parts)


def label_notice(manifest: Manifest, zoo: str) -> str:
    """A visible line for a small label set: anything else is forced into one of its classes."""
    entries = list(manifest.zoo(zoo).entries.values())
    names = manifest.labels(entries[0]).names if entries else []
    if len(names) >= 1000 or not names:
        return f"These models know the {len(names)} ImageNet classes."
    return (f"⚠️ **These models know only {len(names)} classes:** {', '.join(names)}. "
            "A photo of anything else is still forced into one of them, often with high confidence.")


def localisation_line(score: MapScore | None) -> str:
    """One line for a map against the example's boxes (None: the crop left no box in the view)."""
    if score is None:
        return "the object's box is outside what the model sees"
    mark = "✓" if score.hit else "✗"
    if score.peaks > 1 and 0 < score.hit_share < 1:  # a plateau of equal maxima, partly in the box
        mark += f" ({100 * score.hit_share:.0f} % of its {score.peaks} tied maxima)"
    energy = "no mass" if math.isnan(score.energy) else f"{100 * score.energy:.0f} % of the map inside the box"
    return f"peak inside the box {mark} · {energy} (the box covers {100 * score.coverage:.0f} %)"


def localisation_numbers(scores: dict[str, MapScore | None], view_boxes: dict[str, list[Box]]) -> dict:
    """What the API returns for an example with boxes: per model, the boxes in its view and its map's numbers."""
    out = {}
    for model, s in scores.items():
        boxes = [[round(v, 1) for v in (b.x0, b.y0, b.x1, b.y1)] for b in view_boxes.get(model, [])]
        out[model] = {"boxes_in_view": boxes} | ({} if s is None else {
            "peak_in_box": s.hit, "peak_within_15px": s.hit_tolerant, "peak_in_box_ties_at_random": round(s.hit_share, 3),
            "energy_in_boxes": None if math.isnan(s.energy) else round(s.energy, 4),
            "box_coverage": round(s.coverage, 4)})
    return out


def _caption(r: CamResult, labels: LabelSet, true_wnid: str | None, score: MapScore | None = None,
             boxed: bool = False) -> str:
    lines = [f"**{r.explained.name}** {100 * r.explained.probability:.1f}% (explained)"]
    if true_wnid in labels.wnids:
        true = labels.wnids.index(true_wnid)
        lines.append(f"✓ top-1 is the true class ({labels.names[true]})" if r.top5[0].index == true
                     else f"✗ top-1 is {r.top5[0].name}; the true class is {labels.names[true]}")
    if boxed:
        lines.append(localisation_line(score))
    lines.append(f"{1000 * r.seconds:.0f} ms · {r.method} · {r.device}")
    if r.faithfulness:
        f = r.faithfulness
        lines.append(f"focus: top-10% mass {f.top10_mass:.2f} · entropy {f.entropy:.3f}  \n"
                     f"faithfulness: confidence change {f.confidence_change:+.3f} · ROAD {f.road:+.3f}")
    lines += [f"_{n}_" for n in r.notes]
    return "  \n".join(lines)


def _agreement(results: list[CamResult], true_name: str | None) -> str:
    if not results:
        return ""
    said = {r.model: r.top5[0].name for r in results}
    if len(set(said.values())) == 1:
        text = f"{'All three models' if len(said) == 3 else 'The models'} say **{next(iter(said.values()))}**."
    else:
        text = "The models disagree: " + ", ".join(f"{m} says **{n}**" for m, n in said.items()) + "."
    if true_name:
        text += f" True class: **{true_name}**."
    return text


@on_gpu(duration=lambda *args, **kwargs: 300 if METHODS[args[3]].slow else 60)
def explain_on_device(image, zoo, names, method, policy, opacity, with_metrics, time_limit):
    """A request's GPU work, the three models' forwards and CAMs: one ``@spaces.GPU`` call on a ZeroGPU
    Space (arguments and results cross by pickle), a plain generator everywhere else."""
    yield from explain_zoo(image, zoo, names, method, policy, opacity, with_metrics, time_limit)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "image"


class ExplainApp:
    """The handlers behind the page and the API; one instance per ``build_app``."""

    def __init__(self, manifest: Manifest, examples: ExampleSet, uploads: Uploads, settings: ServingSettings) -> None:
        self.manifest, self.examples, self.uploads, self.settings = manifest, examples, uploads, settings

    # -- inputs ---------------------------------------------------------------------------------------------
    def _image(self, payload, params: ExplainParams,
               session: Session | None) -> tuple[LoadedImage, str | None, tuple[Box, ...]]:
        """The image to explain, its true wnid and its object boxes (examples only)."""
        if params.example:
            try:
                example = self.examples.get(params.example)
            except ValueError as e:
                raise ParameterError(str(e)) from None
            return open_image(example.path.read_bytes()), example.wnid, example.boxes
        if payload is None:
            raise ParameterError("Upload an image or pick an example first.")
        path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
        if session is not None and path and path == session.upload_path and not self.uploads.holds(path):
            data = session.upload_data  # the same upload again (another method or class): kept in memory only
        else:  # a new upload (or the same file uploaded again: read and deleted like any other)
            upload_path, data = self.uploads.take(payload)
            image = open_image(data)
            if session is not None:  # kept for a re-run only once it proved to be an image
                session.upload_path, session.upload_data = upload_path, data
            return image, None, ()
        return open_image(data), None, ()

    # -- the run -------------------------------------------------------------------------------------------
    def stream(self, payload, zoo, method, target, class_name, opacity, with_metrics, example,
               session: Session | None, progress, show_boxes: bool = True):
        """Yield an ``Outcome`` as each model finishes; ParameterError / ImageError / PermissionError for bad input."""
        params = parse_params(self.manifest, zoo, method, target, class_name, opacity, with_metrics, example)
        image, true_wnid, boxes = self._image(payload, params, session)
        if session is not None:
            session.params = params
            session.generation += 1
        run = session.generation if session is not None else 0

        def replaced() -> bool:  # another image came while this run was on: none of it may be shown
            return session is not None and session.generation != run
        policy = target_policy(params, true_wnid)
        slow = METHODS[params.method].slow
        progress(0, desc=METHODS[params.method].cost if slow else "computing")
        columns = [(None, "_waiting…_", None) for _ in DEFAULT_MODELS]
        results: list[CamResult] = []
        scores: dict[str, MapScore | None] = {}
        view_boxes: dict[str, list[Box]] = {}
        true_name = view = None
        outcome = Outcome(status="", columns=tuple(columns))
        yield outcome
        for i, item in enumerate(explain_on_device(image, params.zoo, DEFAULT_MODELS, params.method, policy,
                                                   params.opacity, params.with_metrics,
                                                   self.settings.time_limit if slow else None)):
            if replaced():
                return
            if isinstance(item, ModelFailure):
                log.warning("%s/%s failed: %s", params.zoo, item.model, item.reason)
                title = "Not available." if item.unavailable else "Failed."
                columns[i] = (None, f"**{title}** {item.summary}", None)
            else:
                log.info("explained %s/%s %s on %s in %.0f ms", params.zoo, item.model, params.method, item.device,
                         1000 * item.seconds)
                entry = self.manifest.entry(params.zoo, item.model)
                labels = self.manifest.labels(entry)
                results.append(item)
                if boxes:
                    view_boxes[item.model] = [b for b in boxes_to_view(boxes, image.image.size, entry.preprocessing)
                                              if b]
                    scores[item.model] = score_map(item.cam, view_boxes[item.model])
                if session is not None:
                    session.results[item.model] = item
                    session.view_boxes = view_boxes
                if true_wnid in labels.wnids:
                    true_name = labels.names[labels.wnids.index(true_wnid)]
                shown = view_boxes.get(item.model, []) if show_boxes else []
                columns[i] = (self._shown(item.overlay, shown, f"{item.model}-heatmap"),
                              _caption(item, labels, true_wnid, scores.get(item.model), bool(boxes)),
                              {p.name: p.probability for p in item.top5})
            progress((i + 1) / len(DEFAULT_MODELS), desc=f"{DEFAULT_MODELS[i]} done")
            if results and view is None:
                shown = view_boxes.get(results[0].model, []) if show_boxes else []
                view = self._shown((results[0].view * 255).round().astype("uint8"), shown, "view")
            status = _agreement(results, true_name) if results else (
                "No model of this zoo could run here: each column says why." if i == len(DEFAULT_MODELS) - 1 else "")
            outcome = Outcome(status, view, tuple(columns))
            if replaced():
                return
            yield outcome
        if results:
            outcome = replace(outcome, download=self._download(results, params),
                              differences=self._differences(results, view_boxes if show_boxes else {}),
                              localisation=localisation_numbers(scores, view_boxes) if boxes else None)
            if not replaced():
                yield outcome

    def _differences(self, results: list[CamResult], view_boxes: dict[str, list[Box]]) -> tuple:
        """Per pair (a, b) of DIFFERENCES: where a's map is high and b's is not, over the view (same view size)."""
        by_model = {r.model: r for r in results}
        out = []
        for a, b in DIFFERENCES:
            if a in by_model and b in by_model and by_model[a].cam.shape == by_model[b].cam.shape:
                diff = signed_difference(by_model[a].cam, by_model[b].cam)
                out.append(self._shown(difference_overlay(by_model[b].view, diff), view_boxes.get(b, []),
                                       f"{a}-minus-{b}"))
            else:
                out.append(None)
        return tuple(out)

    def _shown(self, rgb, boxes: list[Box], stem: str) -> str:
        """A view-sized picture enlarged for display, the boxes outlined at the enlarged size, published."""
        big = enlarge(rgb, DISPLAY_SIDE)
        if boxes:
            f = big.shape[0] / rgb.shape[0]
            big = draw_boxes(big, [(b.x0 * f, b.y0 * f, b.x1 * f, b.y1 * f) for b in boxes], width=3)
        return self._publish(big, stem)

    def _download(self, results: list[CamResult], params: ExplainParams) -> str:
        explained = {r.explained.name for r in results}
        what = explained.pop() if len(explained) == 1 else "each model's top-1"
        title = f"DSNet Explain · zoo {params.zoo} · {params.method} · explains: {what}"
        return self._publish(comparison(results, tile=DOWNLOAD_TILE, title=title),
                             f"dsnet-{_slug(params.zoo)}-{_slug(params.method)}-{_slug(what)}")

    def _publish(self, picture, stem: str) -> str:
        return publish(picture, stem, self.settings.cache_seconds)

    # -- the two doors: the page (messages stay in the page) and the API (errors are errors) ------------------
    def page(self, image, zoo, method, target, class_name, opacity, metrics, example, show_boxes, session: Session,
             progress=gr.Progress()):
        session = session or Session()
        session.results, session.busy, session.view_boxes = {}, True, {}
        try:
            for outcome in self.stream(image, zoo, method, target, class_name, opacity, metrics, example, session,
                                       progress, show_boxes is not False):
                yield *outcome.values(), session
        except (ParameterError, ImageError, PermissionError) as e:
            yield *Outcome(status=f"⚠️ {e}").values(), session
        finally:
            session.busy = False

    def api(self, image=None, zoo: str = "imagenette", method: str = "gradcam", explain: str = "each model's top-1",
            class_name: str = "", opacity: float = 0.5, metrics: bool = False, example: str = "",
            progress=gr.Progress()):
        try:
            outcome = Outcome()
            for outcome in self.stream(image, zoo, method, explain, class_name, opacity, metrics, example, None,
                                       progress, show_boxes=False):  # the API's numbers carry the boxes
                pass
            return tuple(outcome.values())
        except (ParameterError, ImageError, PermissionError) as e:
            raise gr.Error(str(e)) from None

    def reblend(self, session: Session, opacity, show_boxes=True):
        """New opacity, or the box outline turned on or off: draw the cached maps again; no model runs."""
        session = session or Session()
        try:
            opacity = parse_opacity(opacity)
        except ParameterError as e:
            raise gr.Error(str(e)) from None
        out, blended = [], []
        for name in DEFAULT_MODELS:
            r = session.results.get(name)
            if r is None:
                out.append(gr.skip())
                continue
            blended.append(replace(r, overlay=overlay(r.view, r.cam, opacity)))
            shown = session.view_boxes.get(name, []) if show_boxes is not False else []
            out.append(self._shown(blended[-1].overlay, shown, f"{name}-heatmap"))
        download = self._download(blended, session.params) if blended and session.params else gr.skip()
        if blended:
            boxes = session.view_boxes if show_boxes is not False else {}
            view = self._shown((blended[0].view * 255).round().astype("uint8"), boxes.get(blended[0].model, []), "view")
            differences = self._differences(blended, boxes)
        else:
            view, differences = gr.skip(), tuple(gr.skip() for _ in DIFFERENCES)
        return view, *out, download, *differences

    def pick(self, session: Session, evt: gr.SelectData):
        """A gallery click: the example's id goes to the (hidden) example box; the picture is shown; the
        last results are cleared (they belong to another image)."""
        example = self.examples.get(evt.index)
        boxed = (f" · {example.origin}: the models' maps are scored against the {len(example.boxes)} box"
                 f"{'es' if len(example.boxes) > 1 else ''}") if example.boxes else f" · {example.origin}"
        return (self._publish(example.path, "example"), example.id,
                f"True class: **{example.caption}** (`{example.wnid}`, from the example's label){boxed}",
                gr.Radio(choices=list(TARGETS)), *_new_image(session))

    def own_image(self, example_id, session: Session):
        """The visitor changed the image (upload, paste, webcam, clear): no example, no true class, nothing
        selected in the gallery, and the last results cleared."""
        if not example_id and not (session and (session.results or session.busy)):
            return (gr.skip(),) * (4 + N_OUT + 1)  # nothing to forget: no update, no re-render
        return ("", "", gr.Radio(choices=OWN_IMAGE_TARGETS, value=OWN_IMAGE_TARGETS[0]),
                gr.Gallery(selected_index=None), *_new_image(session))

    def example_list(self) -> list[dict]:
        """The example ids with their true classes (send one as `example` to /explain)."""
        return [{"id": e.id, "wnid": e.wnid, "class": e.caption, "origin": e.origin, "boxes": len(e.boxes)}
                for e in self.examples.examples]


def build_app(gallery_dir: str | None = None, zoo: str = "imagenette",
              settings: ServingSettings | None = None) -> gr.Blocks:
    settings = settings or SETTINGS
    manifest = load_manifest()
    if zoo not in manifest.zoos:
        raise SystemExit(f"unknown zoo {zoo!r}; the manifest has {', '.join(manifest.zoos)}")
    gallery_dir = gallery_dir or os.environ.get("DSNET_GALLERY") or None
    examples = load_examples(manifest, gallery_dir, zoo)
    if on_zerogpu():  # ZeroGPU moves models to the GPU at start-up, never inside a request
        load_available(zoo)
    ttl = settings.cache_seconds
    with gr.Blocks(title="DSNet Explain", delete_cache=(min(60, ttl), ttl)) as demo:
        handlers = ExplainApp(manifest, examples, Uploads(demo.upload_file_set), settings)
        session = gr.State(Session(), time_to_live=ttl)
        gr.Markdown("# DSNet Explain\nWhere do **ResNet50**, **DSNet50** and **DS2Net50** look when they classify "
                    "an image? Pick an example or upload a photo, then press **Explain**: each model's class "
                    "activation map and top-5 appear side by side ([paper](https://arxiv.org/abs/2010.12496)).")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                image = RawImage(type="filepath", label="Image", sources=["upload", "clipboard", "webcam"],
                                 height=280)
                true_class = gr.Markdown("", label="true class")
                run = gr.Button("Explain", variant="primary", elem_id="explain-button")
                gr.Markdown(f"<small>Images up to {MAX_BYTES // 2**20} MB, {MAX_PIXELS // 10**6} MP, aspect ratio "
                            f"{MAX_ASPECT:.0f}:1. Nothing you upload is kept: the file is deleted as soon as it is "
                            f"read.</small>")
                gallery = gr.Gallery(handlers.examples.thumbnails(), label="Examples (click one)", columns=3,
                                     height=330, allow_preview=False, object_fit="cover", buttons=[])
            with gr.Column(scale=2):
                with gr.Row():
                    zoo_box = RawDropdown([(zoo_label(manifest, z), z) for z in manifest.zoos], value=zoo,
                                          label="Model zoo")
                    target_mode = RawRadio(OWN_IMAGE_TARGETS, value=OWN_IMAGE_TARGETS[0],
                                           label="Explain")
                notice = gr.Markdown(label_notice(manifest, zoo))
                target_class = RawDropdown(_class_names(manifest, zoo), label="Class to explain (searchable)",
                                           filterable=True, value="", allow_custom_value=True,
                                           info="a name, an index or a wnid", visible=False)
                with gr.Row():
                    opacity = RawSlider(0, 1, value=0.5, step=0.05, label="Heatmap opacity",
                                        info="changes the maps at once, without running the models")
                    gr.HTML(COLOUR_SCALE)
                show_boxes = RawCheckbox(label="Outline the object's box (examples with boxes)", value=True,
                                         info="the ILSVRC val examples come with ground-truth boxes; each column "
                                              "then says whether the map's peak is on the object")
                with gr.Accordion("Advanced: CAM method and faithfulness numbers", open=False):
                    verdicts = sanity_verdicts()  # read once: one artifact for the whole menu
                    method = RawDropdown([(method_label(m, spec.summary, verdicts), m) for m, spec in METHODS.items()],
                                         value="gradcam",
                                         label="CAM method", info=f"cost: {METHODS['gradcam'].cost}")
                    with_metrics = RawCheckbox(label="Faithfulness numbers (slower)", value=False,
                                               info="focus (how concentrated a map is) and faithfulness (does "
                                                    "removing the hot pixels hurt the score?): README explains each")
                status = gr.Markdown(label="status")
                outputs = [status]
                with gr.Row(equal_height=False):
                    with gr.Column(min_width=140):
                        outputs.append(gr.Image(label="what the models see", type="numpy", format="png",
                                                interactive=False, height=256, buttons=["fullscreen"]))
                    for name in DEFAULT_MODELS:
                        with gr.Column(min_width=140):
                            outputs += [gr.Image(label=f"{name} heatmap", type="numpy", format="png",
                                                 interactive=False, height=256, buttons=["fullscreen"]),
                                        gr.Markdown(label=f"{name} summary"),
                                        gr.Label(num_top_classes=5, label=f"{name} top-5")]
                download = gr.DownloadButton("Download the comparison (PNG)", label="comparison PNG")
                outputs.append(download)
                with gr.Accordion("Where do they differ?", open=True):
                    gr.HTML(DIFFERENCE_SCALE)
                    with gr.Row(equal_height=False):
                        for a, b in DIFFERENCES:
                            outputs.append(gr.Image(label=f"{a} − {b}", type="numpy", format="png", interactive=False,
                                                    height=256, buttons=["fullscreen"]))
                localisation = gr.JSON(label="localisation numbers (examples with object boxes)", visible=False)
                outputs.append(localisation)
        with gr.Accordion("The evidence: how the zoo's maps score over the whole boxed data set", open=False):
            evidence_panel()
        example_id = RawDropdown(handlers.examples.ids(), value="", allow_custom_value=True, label="example",
                                 visible=False)
        gr.Markdown(f"Running on **{serving_device()}** · {len(examples)} examples · queue bound "
                    f"{settings.queue_size}, at most {settings.per_client} requests per visitor · "
                    "API: `/explain` and `/examples` (\"Use via API\" at the bottom of the page)",
                    elem_classes="dsnet-footer")

        inputs = [image, zoo_box, method, target_mode, target_class, opacity, with_metrics, example_id]
        # always_last: a click while the previous run is still finishing (its download is being drawn) runs
        # after it; Gradio's default ("once") drops such a click without a word.
        explaining = run.click(handlers.page, inputs + [show_boxes, session], outputs + [session],
                               api_visibility="private",
                               concurrency_id="explain", scroll_to_output=True, trigger_mode="always_last")
        api_door = gr.Button(visible=False)
        api_door.click(handlers.api, inputs, outputs, api_name="explain", concurrency_id="explain",
                       api_description="Explain one image with the three models: for each, the heatmap over the "
                                       "image as the model saw it, a summary and the top-5. Send an image "
                                       "(uploaded file or data: URL) or an example id (see /examples).")
        gr.api(handlers.example_list, api_name="examples", queue=False)
        # Another image stops a run still on its way: its last columns would land beside the new image.
        gallery.select(handlers.pick, session, [image, example_id, true_class, target_mode, *outputs, session],
                       api_visibility="private", cancels=[explaining])
        image.input(handlers.own_image, [example_id, session], [example_id, true_class, target_mode, gallery,
                                                                *outputs, session],
                    api_visibility="private", queue=False, cancels=[explaining])  # upload, paste, webcam, clear
        target_mode.change(lambda t: gr.Dropdown(visible=t == "one class for all"), target_mode, target_class,
                           api_visibility="private", queue=False)
        zoo_box.change(lambda z: (gr.Dropdown(choices=_class_names(manifest, z), value=""), label_notice(manifest, z)),
                       zoo_box, [target_class, notice], api_visibility="private", queue=False)
        method.change(lambda m: gr.Dropdown(info=f"cost: {METHODS[m].cost}" if m in METHODS else None), method,
                      method, api_visibility="private", queue=False)
        # In the queue (its per-visitor limit): each call writes pictures.
        redrawn = [outputs[1], *outputs[2::3][:len(DEFAULT_MODELS)], download, *outputs[-1 - len(DIFFERENCES):-1]]
        for control in (opacity, show_boxes):
            control.change(handlers.reblend, [session, opacity, show_boxes], redrawn, api_visibility="private",
                           trigger_mode="always_last")
    demo.dsnet_handlers = handlers
    return demo


def _new_image(session: Session | None) -> list:
    """The result components and the session for a new image: the last results no longer apply (and the
    opacity slider must not bring them back)."""
    session = session or Session()
    session.results, session.params = {}, None
    session.generation += 1  # a run still on stops before it shows anything more
    return [*Outcome(status="New image: press **Explain**.").values(), session]


def _class_names(manifest: Manifest, zoo: str) -> list[str]:
    entries = list(manifest.zoo(zoo).entries.values())
    return list(manifest.label_sets[entries[0].labels].names) if entries else []


def launch(demo: gr.Blocks, settings: ServingSettings | None = None, handle_sigterm: bool = False, **kwargs):
    """Start serving with the limits above; ``handle_sigterm`` (``python app.py``) cleans up on SIGTERM."""
    settings = settings or SETTINGS
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    chosen = os.environ.get("DSNET_DEVICE")
    log.info("serving on %s (%s)", serving_device(),
             f"DSNET_DEVICE={chosen}" if chosen else "the default: CUDA, else MPS, else CPU; DSNET_DEVICE chooses")
    retain_freed_memory()
    # pytorch-grad-cam's import (seconds) in the background, so no visitor waits for it
    threading.Thread(target=grad_cam_ready, name="grad-cam-import", daemon=True).start()
    sweep_upload_folder()
    # api_open=False: no route runs a function outside the queue (/gradio_api/run/..., /gradio_api/api/...),
    # so the queue bound and the per-visitor limit hold for every caller.
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency, api_open=False)
    shape_inputs(demo._queue, (RawImage,))
    ClientLimit(settings.per_client, settings.trusted_proxies).install(demo._queue)
    if handle_sigterm:
        def stop(signum, frame):
            log.info("SIGTERM: closing and deleting uploads and outputs")
            demo.close()
            sweep_upload_folder(before=time.time() + 1)
            raise SystemExit(0)
        signal.signal(signal.SIGTERM, stop)
    kwargs.setdefault("enable_monitoring", False)
    gate = _middleware(PublicGate, max_body=MAX_BODY_BYTES, upload_budget=settings.upload_mb_per_client * 2**20,
                       upload_total=settings.upload_mb_total * 2**20, window=settings.cache_seconds,
                       trusted_proxies=settings.trusted_proxies, files_per_client=settings.upload_files_per_client,
                       files_total=10 * settings.upload_files_per_client)
    app_kwargs = {"middleware": [gate], **kwargs.pop("app_kwargs", {})}
    # show_error=False: only gr.Error messages (written for visitors) reach a client, never an exception's text.
    return demo.launch(max_file_size=MAX_BYTES, show_error=False, app_kwargs=app_kwargs, **kwargs)


def _middleware(cls, **options):
    from starlette.middleware import Middleware
    return Middleware(cls, **options)

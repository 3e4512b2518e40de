"""The page: widgets, their layout, and which handler each event calls (``build_app``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import gradio as gr

from dsnet.cam.images import MAX_ASPECT, MAX_BYTES, MAX_PIXELS
from dsnet.cam.service import METHODS
from dsnet.zoo.loader import DEFAULT_MODELS, load_available
from dsnet.zoo.manifest import load_manifest

from .captions import label_notice, zoo_class_names, zoo_label
from .components import RawCheckbox, RawDropdown, RawImage, RawRadio, RawSlider
from .evidence import evidence_panel, method_label, sanity_verdicts
from .examples import load_examples
from .gradio_internals import uploaded_files
from .handlers import ExplainApp
from .params import OWN_IMAGE_TARGETS
from .settings import ServingSettings
from .state import DIFFERENCES, EXPLAIN_GROUP, Session
from .uploads import Uploads
from .zerogpu import on_zerogpu, serving_device

# Jet, as pytorch-grad-cam's show_cam_on_image colours the maps (OpenCV's COLORMAP_JET).
COLOUR_SCALE = (
    "<div style='display:flex;align-items:center;gap:8px;font-size:0.85em'>"
    "<span>low</span><div style='flex:1;height:12px;border-radius:3px;background:linear-gradient("
    "to right,#00007f,#0000ff,#007fff,#00ffff,#7fff7f,#ffff00,#ff7f00,#ff0000,#7f0000)'></div>"
    "<span>high</span></div><div style='font-size:0.8em;opacity:0.75'>how much each region raised the "
    "explained class's score (each map is scaled to its own maximum)</div>"
)
DIFFERENCE_SCALE = (
    "<div style='display:flex;align-items:center;gap:8px;font-size:0.85em'>"
    "<span>ResNet50 looks here more</span><div style='flex:1;height:12px;border-radius:3px;"
    "background:linear-gradient(to right,#053061,#4393c3,#f7f7f7,#d6604d,#67001f)'></div>"
    "<span>DSNet looks here more</span></div><div style='font-size:0.8em;opacity:0.75'>the "
    "difference of the two maps, each scaled to [0, 1]; the photo shows through where they agree"
    "</div>"
)


class UnknownZoo(ValueError):
    """``build_app`` was asked for a zoo the manifest does not have."""


@dataclass(frozen=True)
class BuiltApp:
    """The page and the handlers its events call (tests call the handlers directly)."""

    demo: gr.Blocks
    handlers: ExplainApp
    settings: ServingSettings


def build_app(
    gallery_dir: str | None = None, zoo: str = "imagenette", settings: ServingSettings | None = None
) -> BuiltApp:
    """The page for ``zoo`` with the shipped examples (plus a sample of ``gallery_dir``), its handlers and the
    settings it was built with (``ServingSettings.from_env()`` unless given)."""
    settings = settings or ServingSettings.from_env()
    manifest = load_manifest()
    if zoo not in manifest.zoos:
        raise UnknownZoo(f"unknown zoo {zoo!r}; the manifest has {', '.join(manifest.zoos)}")
    gallery_dir = gallery_dir or os.environ.get("DSNET_GALLERY") or None
    examples = load_examples(manifest, gallery_dir, zoo)
    if on_zerogpu():  # ZeroGPU moves models to the GPU at start-up, never inside a request
        load_available(zoo)
    ttl = settings.cache_seconds
    with gr.Blocks(title="DSNet Explain", delete_cache=(min(60, ttl), ttl)) as demo:
        handlers = ExplainApp(manifest, examples, Uploads(uploaded_files(demo)), settings)
        session = gr.State(Session(), time_to_live=ttl)
        gr.Markdown(
            "# DSNet Explain\nWhere do **ResNet50**, **DSNet50** and **DS2Net50** look when they classify "
            "an image? Pick an example or upload a photo, then press **Explain**: each model's class "
            "activation map and top-5 appear side by side ([paper](https://arxiv.org/abs/2010.12496))."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                image = RawImage(type="filepath", label="Image", sources=["upload", "clipboard", "webcam"], height=280)
                true_class = gr.Markdown("", label="true class")
                run = gr.Button("Explain", variant="primary", elem_id="explain-button")
                gr.Markdown(
                    f"<small>Images up to {MAX_BYTES // 2**20} MB, {MAX_PIXELS // 10**6} MP, aspect ratio "
                    f"{MAX_ASPECT:.0f}:1. Nothing you upload is kept: the file is deleted as soon as it is "
                    f"read.</small>"
                )
                gallery = gr.Gallery(
                    handlers.examples.thumbnails(),
                    label="Examples (click one)",
                    columns=3,
                    height=330,
                    allow_preview=False,
                    object_fit="cover",
                    buttons=[],
                )
            with gr.Column(scale=2):
                with gr.Row():
                    zoo_box = RawDropdown(
                        [(zoo_label(manifest, z), z) for z in manifest.zoos], value=zoo, label="Model zoo"
                    )
                    target_mode = RawRadio(OWN_IMAGE_TARGETS, value=OWN_IMAGE_TARGETS[0], label="Explain")
                notice = gr.Markdown(label_notice(manifest, zoo))
                target_class = RawDropdown(
                    zoo_class_names(manifest, zoo),
                    label="Class to explain (searchable)",
                    filterable=True,
                    value="",
                    allow_custom_value=True,
                    info="a name, an index or a wnid",
                    visible=False,
                )
                with gr.Row():
                    opacity = RawSlider(
                        0,
                        1,
                        value=0.5,
                        step=0.05,
                        label="Heatmap opacity",
                        info="changes the maps at once, without running the models",
                    )
                    gr.HTML(COLOUR_SCALE)
                show_boxes = RawCheckbox(
                    label="Outline the object's box (examples with boxes)",
                    value=True,
                    info="the ILSVRC val examples come with ground-truth boxes; each column "
                    "then says whether the map's peak is on the object",
                )
                with gr.Accordion("Advanced: CAM method and faithfulness numbers", open=False):
                    verdicts = sanity_verdicts()  # read once: one artifact for the whole menu
                    method = RawDropdown(
                        [(method_label(m, spec.summary, verdicts), m) for m, spec in METHODS.items()],
                        value="gradcam",
                        label="CAM method",
                        info=f"cost: {METHODS['gradcam'].cost}",
                    )
                    with_metrics = RawCheckbox(
                        label="Faithfulness numbers (slower)",
                        value=False,
                        info="focus (how concentrated a map is) and faithfulness (does "
                        "removing the hot pixels hurt the score?): README explains each",
                    )
                status = gr.Markdown(label="status")
                outputs = [status]
                with gr.Row(equal_height=False):
                    with gr.Column(min_width=140):
                        outputs.append(
                            gr.Image(
                                label="what the models see",
                                type="numpy",
                                format="png",
                                interactive=False,
                                height=256,
                                buttons=["fullscreen"],
                            )
                        )
                    for name in DEFAULT_MODELS:
                        with gr.Column(min_width=140):
                            outputs += [
                                gr.Image(
                                    label=f"{name} heatmap",
                                    type="numpy",
                                    format="png",
                                    interactive=False,
                                    height=256,
                                    buttons=["fullscreen"],
                                ),
                                gr.Markdown(label=f"{name} summary"),
                                gr.Label(num_top_classes=5, label=f"{name} top-5"),
                            ]
                download = gr.DownloadButton("Download the comparison (PNG)", label="comparison PNG")
                outputs.append(download)
                with gr.Accordion("Where do they differ?", open=True):
                    gr.HTML(DIFFERENCE_SCALE)
                    with gr.Row(equal_height=False):
                        for a, b in DIFFERENCES:
                            outputs.append(
                                gr.Image(
                                    label=f"{a} − {b}",
                                    type="numpy",
                                    format="png",
                                    interactive=False,
                                    height=256,
                                    buttons=["fullscreen"],
                                )
                            )
                localisation = gr.JSON(label="localisation numbers (examples with object boxes)", visible=False)
                outputs.append(localisation)
        with gr.Accordion("The evidence: how the zoo's maps score over the whole boxed data set", open=False):
            evidence_panel()
        example_id = RawDropdown(
            handlers.examples.ids(), value="", allow_custom_value=True, label="example", visible=False
        )
        gr.Markdown(
            f"Running on **{serving_device()}** · {len(examples)} examples · queue bound "
            f"{settings.queue_size}, at most {settings.per_client} requests per visitor, "
            f"{settings.running_per_client} computing "
            "at a time · "
            'API: `/explain` and `/examples` ("Use via API" at the bottom of the page)',
            elem_classes="dsnet-footer",
        )

        inputs = [
            image,
            zoo_box,
            method,
            target_mode,
            target_class,
            opacity,
            with_metrics,
            example_id,
        ]  # ExplainRequest's
        # always_last: a click while the previous run is still finishing (its download is being drawn) runs
        # after it; Gradio's default ("once") drops such a click without a word.
        explaining = run.click(
            handlers.page,
            inputs + [show_boxes, session],
            outputs + [session],
            api_visibility="private",
            concurrency_id=EXPLAIN_GROUP,
            scroll_to_output=True,
            trigger_mode="always_last",
        )
        api_door = gr.Button(visible=False)
        api_door.click(
            handlers.api,
            inputs,
            outputs,
            api_name="explain",
            concurrency_id=EXPLAIN_GROUP,
            api_description="Explain one image with the three models: for each, the heatmap over the "
            "image as the model saw it, a summary and the top-5. Send an image "
            "(uploaded file or data: URL) or an example id (see /examples).",
        )
        gr.api(handlers.example_list, api_name="examples", queue=False)
        # Another image stops a run still on its way: its last columns would land beside the new image.
        gallery.select(
            handlers.pick,
            session,
            [image, example_id, true_class, target_mode, *outputs, session],
            api_visibility="private",
            cancels=[explaining],
        )
        image.input(
            handlers.own_image,
            [example_id, session],
            [example_id, true_class, target_mode, gallery, *outputs, session],
            api_visibility="private",
            queue=False,
            cancels=[explaining],
        )  # upload, paste, webcam, clear
        target_mode.change(
            lambda t: gr.Dropdown(visible=t == "one class for all"),
            target_mode,
            target_class,
            api_visibility="private",
            queue=False,
        )
        zoo_box.change(
            lambda z: (gr.Dropdown(choices=zoo_class_names(manifest, z), value=""), label_notice(manifest, z)),
            zoo_box,
            [target_class, notice],
            api_visibility="private",
            queue=False,
        )
        method.change(
            lambda m: gr.Dropdown(info=f"cost: {METHODS[m].cost}" if m in METHODS else None),
            method,
            method,
            api_visibility="private",
            queue=False,
        )
        # In the queue and in the explain group: each call writes pictures, so it shares the workers, the
        # per-visitor limit and the fair start with Explain (DSNET_CONCURRENCY counts them together).
        redrawn = [outputs[1], *outputs[2::3][: len(DEFAULT_MODELS)], download, *outputs[-1 - len(DIFFERENCES) : -1]]
        for control in (opacity, show_boxes):
            control.change(
                handlers.reblend,
                [session, opacity, show_boxes],
                redrawn,
                api_visibility="private",
                trigger_mode="always_last",
                concurrency_id=EXPLAIN_GROUP,
            )
    return BuiltApp(demo, handlers, settings)

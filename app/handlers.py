"""The handlers behind the page and the API: a request in, one ``Outcome`` per finished model out.

Data path of a request: the image payload goes through ``Uploads.take`` (uploads, data: URLs) or the
example set (by id), then ``dsnet.cam.images.open_image``; the parameters through ``parse_params``; then
``dsnet.cam.service.explain_zoo`` streams one result per model. The page keeps the last results in a
per-session state, so moving the opacity slider re-blends the maps without running a model.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import replace

import gradio as gr

from dsnet.cam.images import (
    ImageError,
    LoadedImage,
    difference_overlay,
    draw_boxes,
    enlarge,
    open_image,
    overlay,
    signed_difference,
)
from dsnet.cam.localisation import Box, MapScore, boxes_to_view, score_map
from dsnet.cam.service import METHODS, CamResult, ModelFailure, comparison, explain_zoo
from dsnet.zoo.loader import DEFAULT_MODELS
from dsnet.zoo.manifest import Manifest

from .budgets import WindowBudget
from .captions import agreement, caption, localisation_numbers
from .examples import ExampleSet
from .gate import client_ip
from .outputs import publish
from .params import (
    OWN_IMAGE_TARGETS,
    TARGETS,
    ExplainParams,
    ExplainRequest,
    ParameterError,
    parse_opacity,
    parse_params,
    target_policy,
)
from .runs import Run, RunRegistry, Visitor
from .settings import ServingSettings
from .state import DIFFERENCES, N_OUT, Outcome, Session, new_image
from .uploads import Uploads
from .zerogpu import on_gpu, on_zerogpu

log = logging.getLogger("dsnet.app")

DISPLAY_SIDE = 256  # maps are shown at least this large (the imagenette models see 160 px)
DOWNLOAD_TILE = 320


def gpu_seconds(image: LoadedImage, params: ExplainParams, policy, time_limit: float | None, should_stop=None) -> int:
    """How long one request may hold a ZeroGPU: longer for the slow methods."""
    return 300 if METHODS[params.method].slow else 60


@on_gpu(duration=gpu_seconds)
def explain_on_device(
    image: LoadedImage,
    params: ExplainParams,
    policy,
    time_limit: float | None,
    should_stop: Callable[[], bool] | None = None,
):
    """A request's GPU work, the three models' forwards and CAMs: one ``@spaces.GPU`` call on a ZeroGPU
    Space (arguments and results cross by pickle, so no ``should_stop`` there: the run then stops between
    models, in ``stream``), a plain generator everywhere else."""
    yield from explain_zoo(
        image,
        params.zoo,
        DEFAULT_MODELS,
        params.method,
        policy,
        params.opacity,
        params.with_metrics,
        time_limit,
        should_stop,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "image"


class ExplainApp:
    """The handlers behind the page and the API; one instance per ``build_app``."""

    def __init__(
        self,
        manifest: Manifest,
        examples: ExampleSet,
        uploads: Uploads,
        settings: ServingSettings,
        runs: RunRegistry | None = None,
    ) -> None:
        self.manifest, self.examples, self.uploads, self.settings = manifest, examples, uploads, settings
        self.runs = runs or RunRegistry()
        # per visitor only: a total over everyone would let a few addresses' tiny header-only files shut every
        # visitor out; the memory decoding holds at once is bounded by the concurrency, not by this rate
        self.pixels = WindowBudget(settings.upload_mp_per_client * 1e6, math.inf, settings.cache_seconds)

    # -- inputs ---------------------------------------------------------------------------------------------
    def _image(
        self, payload, params: ExplainParams, session: Session | None, visitor: Visitor | None = None
    ) -> tuple[LoadedImage, str | None, tuple[Box, ...]]:
        """The image to explain, its true wnid and its object boxes (examples only). A visitor's own image
        is charged by its pixels before it is decoded (``DSNET_UPLOAD_MP_PER_CLIENT``)."""
        admit = None if visitor is None else (lambda width, height: self._admit(visitor, width * height))
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
            image = open_image(data, admit)
            if session is not None:  # kept for a re-run only once it proved to be an image
                session.upload_path, session.upload_data = upload_path, data
            return image, None, ()
        return open_image(data, admit), None, ()

    def _admit(self, visitor: Visitor, pixels: int) -> None:
        """Charge a decode to its visitor, or refuse it (PermissionError: a message for the visitor)."""
        over = self.pixels.exceeded(visitor.ip, pixels)
        minutes = f"{self.settings.cache_seconds / 60:.0f} minutes"
        if over == "client":
            raise PermissionError(
                f"Your images of the last {minutes} add up to "
                f"{self.pixels.used(visitor.ip) / 1e6:.0f} MP; the limit is "
                f"{self.settings.upload_mp_per_client} MP per visitor. Wait a few minutes."
            )
        self.pixels.charge(visitor.ip, pixels)

    # -- the run -------------------------------------------------------------------------------------------
    def stream(
        self,
        request: ExplainRequest,
        session: Session | None,
        progress,
        show_boxes: bool = True,
        visitor: Visitor | None = None,
    ):
        """Yield an ``Outcome`` as each model finishes; ParameterError / ImageError / PermissionError for bad input.

        The models compute only inside ``self.runs.computing`` (counted for ``visitor`` until the work has
        stopped), and stop between models and inside the slow methods once the run is cancelled or its
        image replaced."""
        params = parse_params(self.manifest, request)
        image, true_wnid, boxes = self._image(request.image, params, session, visitor)
        if session is not None:
            session.params = params
            session.generation += 1
        run = session.generation if session is not None else 0

        def replaced() -> bool:  # another image came while this run was on: none of it may be shown
            return session is not None and session.generation != run

        work = Run(visitor or Visitor("local"))

        def should_stop() -> bool:
            return work.should_stop() or replaced()

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
        time_limit = self.settings.time_limit if slow else None
        models = explain_on_device(image, params, policy, time_limit, None if on_zerogpu() else should_stop)
        for i in range(len(DEFAULT_MODELS)):
            with self.runs.computing(work):
                item = next(models, None)
            if item is None or should_stop():
                return
            if isinstance(item, ModelFailure):
                log.warning("%s/%s failed: %s", params.zoo, item.model, item.reason)
                title = "Not available." if item.unavailable else "Failed."
                columns[i] = (None, f"**{title}** {item.summary}", None)
            else:
                log.info(
                    "explained %s/%s %s on %s in %.0f ms",
                    params.zoo,
                    item.model,
                    params.method,
                    item.device,
                    1000 * item.seconds,
                )
                entry = self.manifest.entry(params.zoo, item.model)
                labels = self.manifest.labels(entry)
                results.append(item)
                if boxes:
                    view_boxes[item.model] = [
                        b for b in boxes_to_view(boxes, image.image.size, entry.preprocessing) if b
                    ]
                    scores[item.model] = score_map(item.cam, view_boxes[item.model])
                if session is not None:
                    session.results[item.model] = item
                    session.view_boxes = view_boxes
                if true_wnid in labels.wnids:
                    true_name = labels.names[labels.wnids.index(true_wnid)]
                shown = view_boxes.get(item.model, []) if show_boxes else []
                columns[i] = (
                    self._shown(item.overlay, shown, f"{item.model}-heatmap"),
                    caption(item, labels, true_wnid, scores.get(item.model), bool(boxes)),
                    {p.name: p.probability for p in item.top5},
                )
            progress((i + 1) / len(DEFAULT_MODELS), desc=f"{DEFAULT_MODELS[i]} done")
            if results and view is None:
                shown = view_boxes.get(results[0].model, []) if show_boxes else []
                view = self._shown((results[0].view * 255).round().astype("uint8"), shown, "view")
            status = (
                agreement(results, true_name)
                if results
                else (
                    "No model of this zoo could run here: each column says why." if i == len(DEFAULT_MODELS) - 1 else ""
                )
            )
            outcome = Outcome(status, view, tuple(columns))
            if replaced():
                return
            yield outcome
        if results:
            outcome = replace(
                outcome,
                download=self._download(results, params),
                differences=self._differences(results, view_boxes if show_boxes else {}),
                localisation=localisation_numbers(scores, view_boxes) if boxes else None,
            )
            if not replaced():
                yield outcome

    def _differences(self, results: list[CamResult], view_boxes: dict[str, list[Box]]) -> tuple:
        """Per pair (a, b) of DIFFERENCES: where a's map is high and b's is not, over the view (same view size)."""
        by_model = {r.model: r for r in results}
        out = []
        for a, b in DIFFERENCES:
            if a in by_model and b in by_model and by_model[a].cam.shape == by_model[b].cam.shape:
                diff = signed_difference(by_model[a].cam, by_model[b].cam)
                out.append(
                    self._shown(difference_overlay(by_model[b].view, diff), view_boxes.get(b, []), f"{a}-minus-{b}")
                )
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
        return self._publish(
            comparison(results, tile=DOWNLOAD_TILE, title=title),
            f"dsnet-{_slug(params.zoo)}-{_slug(params.method)}-{_slug(what)}",
        )

    def _publish(self, picture, stem: str) -> str:
        return publish(picture, stem, self.settings.cache_seconds)

    # -- the two doors: the page (messages stay in the page) and the API (errors are errors) ------------------
    def page(
        self,
        image,
        zoo,
        method,
        explain,
        class_name,
        opacity,
        metrics,
        example,
        show_boxes,
        session: Session,
        progress=gr.Progress(),
        request: gr.Request | None = None,
    ):
        """The Explain button: the page's widgets (``ExplainRequest``'s fields in order), the box toggle, the state."""
        session = session or Session()
        session.results, session.busy, session.view_boxes = {}, True, {}
        asked = ExplainRequest(image, zoo, method, explain, class_name, opacity, metrics, example)
        try:
            for outcome in self.stream(asked, session, progress, show_boxes is not False, self._visitor(request)):
                yield *outcome.values(), session
        except (ParameterError, ImageError, PermissionError) as e:
            yield *Outcome(status=f"⚠️ {e}").values(), session
        finally:
            session.busy = False

    def api(
        self,
        image=None,
        zoo: str = "imagenette",
        method: str = "gradcam",
        explain: str = "each model's top-1",
        class_name: str = "",
        opacity: float = 0.5,
        metrics: bool = False,
        example: str = "",
        progress=gr.Progress(),
        request: gr.Request | None = None,
    ):
        """/explain: the same run with no page state; a bad input is an error, not a status line."""
        asked = ExplainRequest(image, zoo, method, explain, class_name, opacity, metrics, example)
        try:
            # the API's numbers carry the boxes: no outline on its pictures
            *_, outcome = self.stream(asked, None, progress, False, self._visitor(request))
            return tuple(outcome.values())
        except (ParameterError, ImageError, PermissionError) as e:
            raise gr.Error(str(e)) from None

    def _visitor(self, request: gr.Request | None) -> Visitor | None:
        if request is None:  # called in this process (tests, scripts): no HTTP request
            return None
        return Visitor(client_ip(request, self.settings.trusted_proxies), request.session_hash)

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
        boxed = (
            (
                f" · {example.origin}: the models' maps are scored against the {len(example.boxes)} box"
                f"{'es' if len(example.boxes) > 1 else ''}"
            )
            if example.boxes
            else f" · {example.origin}"
        )
        return (
            self._publish(example.path, "example"),
            example.id,
            f"True class: **{example.caption}** (`{example.wnid}`, from the example's label){boxed}",
            gr.Radio(choices=list(TARGETS)),
            *new_image(session),
        )

    def own_image(self, example_id, session: Session):
        """The visitor changed the image (upload, paste, webcam, clear): no example, no true class, nothing
        selected in the gallery, and the last results cleared."""
        if not example_id and not (session and (session.results or session.busy)):
            return (gr.skip(),) * (4 + N_OUT + 1)  # nothing to forget: no update, no re-render
        return (
            "",
            "",
            gr.Radio(choices=OWN_IMAGE_TARGETS, value=OWN_IMAGE_TARGETS[0]),
            gr.Gallery(selected_index=None),
            *new_image(session),
        )

    def example_list(self) -> list[dict]:
        """The example ids with their true classes (send one as `example` to /explain)."""
        return [
            {"id": e.id, "wnid": e.wnid, "class": e.caption, "origin": e.origin, "boxes": len(e.boxes)}
            for e in self.examples.examples
        ]

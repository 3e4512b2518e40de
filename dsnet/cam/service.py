"""The Grad-CAM service: per model, top-5 and a class activation map from one forward pass.

The target layer is ``layer4`` (the last aggregation output); only global pooling and ``fc`` follow
it (docs/architecture.md, "Why the service runs one forward per model"). So the body runs once,
without autograd, and pytorch-grad-cam's methods run on a per-call *head* module (pool + fc with
detached weights) whose input is the layer4 activation: gradients, ablations and the top-5 all come
from that single body pass, and no hook, gradient or layer swap ever touches the shared model.
ScoreCAM masks the *input image*, so it is the one method that needs the whole network; it holds a
per-model lock while its hooks are on.
"""

from __future__ import annotations

import importlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dsnet.cam.images import LoadedImage, model_view, open_image, overlay, to_tensor
from dsnet.cam.render import grid, titled
from dsnet.core.text import shortened
from dsnet.zoo.loader import DEFAULT_MODELS, ZooError, ZooModel, load
from dsnet.zoo.weights import ChecksumError


@dataclass(frozen=True)
class Method:
    """One CAM method: the one table the service, the app and the tests read."""

    name: str
    class_name: str  # in pytorch_grad_cam, imported on first use (it takes seconds: command-line help stays fast)
    whole_network: bool  # True: needs forwards of the full model (cannot use the head shortcut)
    slow: bool  # seconds or more: runs under the time limit, with progress
    cost: str  # shown to users before they run it
    summary: str  # what the map means, in one line
    batch_size: int | None = None  # masked / ablated copies per batch (ScoreCAM, AblationCAM)
    extra_args: Callable[[], dict] = dict  # more constructor arguments, made fresh for every call

    @property
    def cam_class(self) -> type:
        return getattr(importlib.import_module("pytorch_grad_cam"), self.class_name)


def _ablation_layer() -> dict:
    from pytorch_grad_cam.ablation_layer import AblationLayer

    return {"ablation_layer": AblationLayer()}


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "gradcam",
            "GradCAM",
            False,
            False,
            "one forward + a backward through the head",
            "weights layer4's channels by their average gradient: the standard, fast choice",
        ),
        Method(
            "gradcam++",
            "GradCAMPlusPlus",
            False,
            False,
            "one forward + a backward through the head",
            "like Grad-CAM, with weights that favour several instances of the object",
        ),
        Method(
            "xgradcam",
            "XGradCAM",
            False,
            False,
            "one forward + a backward through the head",
            "Grad-CAM with weights scaled by the activations (axiom-based)",
        ),
        Method(
            "hirescam",
            "HiResCAM",
            False,
            False,
            "one forward + a backward through the head",
            "gradient times activation per cell: follows the model's computation exactly",
        ),
        Method(
            "layercam",
            "LayerCAM",
            False,
            False,
            "one forward + a backward through the head",
            "keeps only positive gradients, per cell: sharper maps",
        ),
        Method(
            "eigencam",
            "EigenCAM",
            False,
            False,
            "one forward + an SVD of the layer4 activation",
            "the first principal component of layer4 (the same map whatever the class)",
        ),
        Method(
            "eigengradcam",
            "EigenGradCAM",
            False,
            False,
            "one forward + a backward + an SVD",
            "the principal component of gradient times activation (class-aware)",
        ),
        # AblationCAM's default AblationLayer is one instance shared by every AblationCAM: each call its own.
        Method(
            "ablationcam",
            "AblationCAM",
            False,
            True,
            "one forward + one head-only pass per layer4 channel, batched by 32: seconds, not minutes",
            "how much the score drops when each channel is removed",
            batch_size=32,
            extra_args=_ablation_layer,
        ),
        Method(
            "scorecam",
            "ScoreCAM",
            True,
            True,
            "one forward of the WHOLE network per layer4 channel: slow (minutes on a CPU at full width)",
            "how much each channel's mask raises the score: slow, whole network per channel",
            batch_size=32,
        ),
    ]
}


class CamTimeout(RuntimeError):
    """An expensive method ran past its time limit and was stopped."""


class CamStopped(RuntimeError):
    """The caller asked a run to stop (``should_stop``): a cancelled request, a replaced image."""


@dataclass(frozen=True)
class TargetPolicy:
    """Which class to explain: each model's own top-1, one named class, or the true label."""

    kind: Literal["top1", "class", "label"] = "top1"
    value: str | int | None = None  # class index/name for "class", wnid for "label"

    @staticmethod
    def parse(text: str | None, label_wnid: str | None = None) -> TargetPolicy:
        """ "top1" (default), "label", or a class name / index / wnid such as "golf ball" or "574"."""
        text = (text or "top1").strip()
        if text.lower() in ("top1", "top-1", "predicted", ""):
            return TargetPolicy()
        if text.lower() in ("label", "true", "ground truth"):
            if not label_wnid:
                raise ValueError("this image has no known label; pick a class or use the top-1 prediction")
            return TargetPolicy("label", label_wnid)
        return TargetPolicy("class", text)

    def resolve(self, zm: ZooModel, logits: torch.Tensor) -> int:
        if self.kind == "top1":
            return int(logits.argmax())
        if self.kind == "label":
            if self.value not in zm.labels.wnids:
                raise ValueError(
                    f"the true class {self.value} is not among the {len(zm.labels.wnids)} classes of {zm.zoo}/{zm.name}"
                )
            return zm.labels.wnids.index(self.value)
        return zm.labels.index(self.value)


@dataclass(frozen=True)
class Prediction:
    index: int
    name: str
    probability: float


@dataclass(frozen=True)
class Faithfulness:
    """Numbers for one map (docs/app.md, "The page")."""

    top10_mass: float  # share of CAM mass in the top 10 % of pixels: 0.1 = flat, 1 = one spot
    entropy: float  # entropy of the map as a distribution, / log(pixels): 1 = flat, 0 = one pixel
    confidence_change: float | None = None  # p(class | image x CAM) - p(class | image)
    road: float | None = None  # ROAD combined (LeRF - MoRF)/2 over 20..80 %: higher = more faithful


@dataclass(frozen=True)
class CamResult:
    zoo: str
    model: str
    method: str
    view: np.ndarray  # float32 H x W x 3 in [0, 1]: the image as the model saw it
    cam: np.ndarray  # float32 H x W in [0, 1], same H x W as the view
    overlay: np.ndarray  # uint8 H x W x 3 RGB
    top5: list[Prediction]
    explained: Prediction
    seconds: float
    faithfulness: Faithfulness | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    device: str = "cpu"  # where the model ran ("cpu", "cuda", "mps")


class _Head(nn.Module):
    """Global pooling + fc of ``model`` with detached weights; input: the layer4 activation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.target = nn.Identity()  # the CAM target layer: hooks live here, never on ``model``
        self.weight = model.fc.weight.detach()
        self.bias = model.fc.bias.detach()
        self.device_anchor = nn.Parameter(torch.empty(0, device=self.weight.device), requires_grad=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(F.adaptive_avg_pool2d(self.target(features), 1), 1)
        return F.linear(pooled, self.weight, self.bias)


class _AtViewSize:
    """BaseCAM override: scale maps to the view, not to the (layer4-sized) head input."""

    view_size: tuple[int, int]

    def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
        return self.view_size


_HEAD_CLASSES: dict[type, type] = {}


def _head_cam_class(cam_class: type) -> type:
    if cam_class not in _HEAD_CLASSES:
        _HEAD_CLASSES[cam_class] = type(f"Head{cam_class.__name__}", (_AtViewSize, cam_class), {})
    return _HEAD_CLASSES[cam_class]


class _Deadline:
    """A target callable that stops an expensive method once its time is up, or once its caller asks it to
    (``should_stop``): AblationCAM and ScoreCAM call it for every batch of masked inputs."""

    def __init__(self, target: Callable, deadline: float | None, should_stop: Callable[[], bool] | None = None) -> None:
        self.target, self.deadline, self.should_stop = target, deadline, should_stop

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.should_stop is not None and self.should_stop():
            raise CamStopped("stopped on request")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise CamTimeout("the method ran past its time limit and was stopped; try GradCAM, or a smaller image set")
        return self.target(output)


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.Lock())


def top10_mass(cam: np.ndarray) -> float:
    flat = np.sort(cam.ravel())[::-1]
    total = flat.sum()
    return float(flat[: max(1, len(flat) // 10)].sum() / total) if total > 0 else 0.1


def normalised_entropy(cam: np.ndarray) -> float:
    p = cam.ravel().astype(np.float64)
    total = p.sum()
    if total <= 0:
        return 1.0
    p = p[p > 0] / total
    return float(-(p * np.log(p)).sum() / np.log(cam.size))


def faithfulness(zm: ZooModel, x: torch.Tensor, cam: np.ndarray, cls: int) -> Faithfulness:
    """Focus numbers, plus pytorch-grad-cam's confidence change and ROAD on the whole model."""
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    targets = [ClassifierOutputSoftmaxTarget(cls)]
    cams = cam[None]
    with torch.no_grad():
        change = float(CamMultImageConfidenceChange()(x, cams, targets, zm.model)[0])
        road = float(ROADCombined(percentiles=[20, 40, 60, 80])(x, cams, targets, zm.model)[0])
    return Faithfulness(top10_mass(cam), normalised_entropy(cam), change, road)


def _run_cam(cam, spec: Method, x: torch.Tensor, targets: list) -> np.ndarray:
    """Run a CAM object and always remove its hooks; errors propagate (BaseCAM's ``with`` swallows IndexError)."""
    if spec.batch_size:
        cam.batch_size = spec.batch_size
    try:
        return cam(input_tensor=x, targets=targets)[0]
    finally:
        cam.activations_and_grads.release()


def grad_cam_ready() -> None:
    """Import pytorch-grad-cam once (2-3 s on two cores: it brings OpenCV and Matplotlib), outside any
    model's timing: a side-by-side tool must not charge the first model of the first request for it.
    The app also calls it in the background at start-up, so the first visitor does not wait for it."""
    import pytorch_grad_cam
    import pytorch_grad_cam.metrics.road
    import pytorch_grad_cam.utils.model_targets  # noqa: F401


def explain_model(
    image: LoadedImage,
    zm: ZooModel,
    method: str = "gradcam",
    target: TargetPolicy = TargetPolicy(),
    opacity: float = 0.5,
    with_metrics: bool = False,
    time_limit: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CamResult:
    """One model's top-5 and CAM for an already validated image; ``should_stop`` (checked inside the slow
    methods' loops) ends it early with CamStopped."""
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    spec = METHODS[method]
    grad_cam_ready()
    started = time.perf_counter()
    deadline = time.monotonic() + time_limit if time_limit else None
    pre = zm.entry.preprocessing
    view = model_view(image.image, pre)
    x = to_tensor(view, pre).to(zm.device)
    model = zm.model
    with torch.no_grad():
        features = model.forward_features(x)
    head = _Head(model)
    with torch.no_grad():
        logits = head(features)[0].float()
    probs = logits.softmax(0)
    cls = target.resolve(zm, logits)
    names = zm.labels.names
    top = probs.topk(min(5, len(probs)))
    top5 = [Prediction(int(i), names[int(i)], float(p)) for p, i in zip(top.values, top.indices)]
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_target = [_Deadline(ClassifierOutputTarget(cls), deadline, should_stop)]
    size = (view.shape[1], view.shape[0])
    if spec.whole_network:
        with model_lock(model):
            cam = spec.cam_class(model=model, target_layers=[model.layer4], **spec.extra_args())
            grayscale = _run_cam(cam, spec, x, cam_target)
    else:
        cam = _head_cam_class(spec.cam_class)(model=head, target_layers=[head.target], **spec.extra_args())
        cam.view_size = size
        grayscale = _run_cam(cam, spec, features.detach().requires_grad_(), cam_target)
    grayscale = np.clip(grayscale.astype(np.float32), 0.0, 1.0)
    metrics = faithfulness(zm, x, grayscale, cls) if with_metrics else None
    return CamResult(
        zoo=zm.zoo,
        model=zm.name,
        method=method,
        view=view,
        cam=grayscale,
        overlay=overlay(view, grayscale, opacity),
        top5=top5,
        explained=Prediction(cls, names[cls], float(probs[cls])),
        seconds=time.perf_counter() - started,
        faithfulness=metrics,
        notes=image.notes,
        device=zm.device.type,
    )


def explain(
    image,
    models: list[ZooModel],
    method: str = "gradcam",
    target: TargetPolicy | str = TargetPolicy(),
    opacity: float = 0.5,
    with_metrics: bool = False,
    time_limit: float | None = None,
) -> list[CamResult]:
    """Every model's result for one image (a path, bytes, PIL image, array or LoadedImage)."""
    loaded = image if isinstance(image, LoadedImage) else open_image(image)
    policy = TargetPolicy.parse(target) if isinstance(target, str) else target
    return [explain_model(loaded, zm, method, policy, opacity, with_metrics, time_limit) for zm in models]


@dataclass(frozen=True)
class ModelFailure:
    """A model that gave no result: its weights are unavailable, or its run failed (the reason says)."""

    model: str
    reason: str  # the whole story, for logs and developers (may name server paths)
    unavailable: bool  # True: no weights to load; False: the run itself failed
    summary: str = ""  # one line without paths, for the people using a public app


def explain_zoo(
    image: LoadedImage,
    zoo: str,
    names: tuple[str, ...] = DEFAULT_MODELS,
    method: str = "gradcam",
    target: TargetPolicy = TargetPolicy(),
    opacity: float = 0.5,
    with_metrics: bool = False,
    time_limit: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[CamResult | ModelFailure]:
    """One result per model, yielded as each finishes (for streaming UIs); never a stand-in model.
    ``should_stop`` is checked before each model and inside the slow methods: the stream ends there."""
    for name in names:
        if should_stop is not None and should_stop():
            return
        try:
            zm = load(zoo, name)
        except (ZooError, ChecksumError) as e:
            yield ModelFailure(name, str(e), True, getattr(e, "summary", "Its weights failed verification."))
            continue
        try:
            result = explain_model(image, zm, method, target, opacity, with_metrics, time_limit, should_stop)
        except CamStopped:
            return
        except (ValueError, CamTimeout, ZooError, ChecksumError) as e:
            yield ModelFailure(
                name,
                str(e),
                False,
                str(e) if isinstance(e, (ValueError, CamTimeout)) else getattr(e, "summary", "The model failed."),
            )
            continue
        yield result


def comparison(results: list[CamResult], tile: int = 224, title: str | None = None) -> Image.Image:
    """One row: the input as the first model saw it, then each model's overlay, titled with its class;
    ``title`` (e.g. zoo, method and class) goes on a line above."""
    titles = ["input"] + [
        f"{r.model}\n{shortened(r.explained.name, 22)} {100 * r.explained.probability:.0f}%\ntop-1: "
        f"{shortened(r.top5[0].name, 16)}"
        for r in results
    ]
    body = grid([[results[0].view] + [r.overlay for r in results]], titles, [], tile)
    return titled(body, title, tile) if title else body

"""The explain endpoint's parameters, validated by type before anything runs.

Gradio's own choice checks echo the whole value back and its checkbox passes any JSON value through
(the string "false" is truthy), so the UI's input components hand their raw values here and every
message quotes a client's value with ``dsnet.core.text.quoted``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dsnet.cam.service import METHODS, TargetPolicy
from dsnet.core.text import quoted
from dsnet.zoo.manifest import Manifest

TARGETS = {"each model's top-1": "top1", "one class for all": "class", "the true class": "label"}
OWN_IMAGE_TARGETS = [name for name, kind in TARGETS.items() if kind != "label"]  # no true class for an upload


class ParameterError(ValueError):
    """A parameter a client sent cannot be used; the message is meant for that client."""


@dataclass(frozen=True)
class ExplainRequest:
    """What a client sent to /explain (or the page's widgets hold), unchecked: ``parse_params`` checks it."""

    image: object = None  # an upload's payload, a data: URL payload, or None with an example id
    zoo: object = "imagenette"
    method: object = "gradcam"
    explain: object = "each model's top-1"  # a TARGETS name (or its kind)
    class_name: object = ""
    opacity: object = 0.5
    metrics: object = False
    example: object = ""  # an example id


@dataclass(frozen=True)
class ExplainParams:
    """A checked request, less its image (``ExplainApp`` resolves that)."""

    zoo: str
    method: str
    target: str  # "top1" | "class" | "label"
    class_name: str  # for target "class"
    opacity: float
    with_metrics: bool
    example: str  # an example id, or "" for an uploaded image


def _choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ParameterError(f"{name} must be one of {', '.join(map(str, choices))}; got {quoted(value)}")
    return value


def parse_params(manifest: Manifest, request: ExplainRequest) -> ExplainParams:
    """Check every parameter by type and range; ParameterError with one sentence otherwise."""
    zoo, method, target, class_name = request.zoo, request.method, request.explain, request.class_name
    opacity, with_metrics, example = request.opacity, request.metrics, request.example
    zoo = _choice("zoo", zoo, list(manifest.zoos))
    method = _choice("method", method, list(METHODS))
    if target in TARGETS.values():
        target_kind = target
    else:
        target_kind = TARGETS[_choice("explain", target, list(TARGETS))]
    if class_name is None:
        class_name = ""
    if not isinstance(class_name, (str, int)) or isinstance(class_name, bool):
        raise ParameterError(f"class_name must be a class name, index or wnid; got {quoted(class_name)}")
    class_name = str(class_name).strip()
    if target_kind == "class":
        if not class_name:
            raise ParameterError("pick the class to explain (a name, an index or a wnid)")
        for entry in manifest.zoo(zoo).entries.values():  # fails before any model runs
            try:
                manifest.labels(entry).index(class_name)
            except ValueError as e:
                raise ParameterError(str(e)) from None
    opacity = parse_opacity(opacity)
    if not isinstance(with_metrics, bool):
        raise ParameterError(f"metrics must be true or false; got {quoted(with_metrics)}")
    if example is None:
        example = ""
    if not isinstance(example, str):
        raise ParameterError(f"example must be an example id; got {quoted(example)}")
    return ExplainParams(zoo, method, target_kind, class_name, opacity, with_metrics, example.strip())


def parse_opacity(opacity) -> float:
    """A number from 0 to 1 (booleans and strings are not numbers here)."""
    if (
        isinstance(opacity, bool)
        or not isinstance(opacity, (int, float))
        or not math.isfinite(opacity)
        or not 0 <= opacity <= 1
    ):
        raise ParameterError(f"opacity must be a number from 0 to 1; got {quoted(opacity)}")
    return float(opacity)


def target_policy(params: ExplainParams, true_wnid: str | None) -> TargetPolicy:
    if params.target == "class":
        return TargetPolicy("class", params.class_name)
    if params.target == "label":
        if not true_wnid:
            raise ParameterError(
                "the true class is known only for the examples; explain each model's top-1 or one class for all"
            )
        return TargetPolicy("label", true_wnid)
    return TargetPolicy()

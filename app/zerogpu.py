"""The ZeroGPU seam: ``on_gpu(duration=...)`` and ``serving_device()``.

On a ZeroGPU Space (``SPACES_ZERO_GPU=true``, set by the Hub; the rule ``spaces.config`` uses) the
``spaces`` package is imported here, before any model loads: it patches torch so that models can be
moved to "cuda" at start-up, and ``on_gpu`` is ``spaces.GPU(duration=...)``, which runs the decorated
function in a forked worker that holds a GPU for that call. Everywhere else ``on_gpu`` returns the
function itself (``spaces.GPU`` does the same outside ZeroGPU), so the CPU path and plain GPU
hardware (CUDA, picked by ``dsnet.zoo.loader.pick_device``) run exactly as without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def on_zerogpu() -> bool:
    """Whether this process runs on a ZeroGPU Space (the same test as ``spaces.config``)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


if on_zerogpu():
    try:
        import spaces  # noqa: F401 - must come before CUDA is touched; patches torch for start-up loading
    except ImportError as e:  # pragma: no cover - the Hub installs it on ZeroGPU Spaces; requirements.txt too
        raise ImportError(
            "this is a ZeroGPU Space but the `spaces` package is missing: add it to requirements.txt"
        ) from e


def on_gpu(duration: int | Callable[..., int] = 60) -> Callable[[F], F]:
    """Decorator: ``spaces.GPU(duration=duration)`` on ZeroGPU, else the identity.

    ``duration``: seconds the call may hold the GPU (or a function of the call's arguments that
    returns them). Plain and generator functions are supported; async functions are not. On ZeroGPU
    the call runs in a forked worker: its arguments and results cross by pickle (pass images and
    options, not models or locks; ``CamResult`` pickles), and models should be loaded before launch.
    """
    if on_zerogpu():
        import spaces

        return spaces.GPU(duration=duration)
    return lambda fn: fn


def serving_device() -> str:
    """ "cpu", "cuda" or "mps": where the models run (``dsnet.zoo.loader.pick_device``; ZeroGPU reports "cuda")."""
    from dsnet.zoo.loader import pick_device

    return pick_device().type

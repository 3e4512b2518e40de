"""A model registry in the manner of torchvision's ``models._api``: builders register by name."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from torch import nn

BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrapper(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in BUILDERS:
            raise ValueError(f"a model named {key!r} is already registered")
        BUILDERS[key] = fn
        return fn

    return wrapper


def _register_builtin() -> None:
    """Import ``dsnet.models``, whose decorated builders register themselves (on first use, not at
    ``import dsnet``: PyTorch takes seconds to import)."""
    from . import models  # noqa: F401


def list_models() -> list[str]:
    _register_builtin()
    return sorted(BUILDERS)


def get_builder(name: str) -> Callable[..., nn.Module]:
    _register_builtin()
    try:
        return BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None

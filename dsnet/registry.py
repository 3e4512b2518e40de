"""A model registry in the manner of torchvision's ``models._api``: builders register by name."""
from __future__ import annotations

from typing import Callable

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


def list_models() -> list[str]:
    return sorted(BUILDERS)


def get_builder(name: str) -> Callable[..., nn.Module]:
    try:
        return BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None

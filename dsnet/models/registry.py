"""A model registry in the manner of torchvision's ``models._api``: builders register by name.

This module only holds the table; ``dsnet.models`` fills it (its networks register on import) and
looks names up, so the networks and the registry never import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

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

"""The networks: ResNet50 and the dense-shortcut DSNet / DS2Net family (``networks``), the fast exact
kernels of their shortcuts (``kernels``) and the builder registry (``registry``).

``list_models`` / ``get_builder`` import the networks on first use, not at ``import dsnet``
(PyTorch takes seconds to import).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .registry import BUILDERS, register_model

if TYPE_CHECKING:
    from torch import nn

__all__ = ["build_model", "get_builder", "list_models", "register_model"]


def _register_builtin() -> None:
    from . import networks  # noqa: F401 - its decorated builders register themselves


def list_models() -> list[str]:
    _register_builtin()
    return sorted(BUILDERS)


def get_builder(name: str) -> Callable[..., nn.Module]:
    _register_builtin()
    try:
        return BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def build_model(name: str, **kwargs) -> nn.Module:
    """The registered builder ``name`` called with ``kwargs``: a new model with random weights."""
    return get_builder(name)(**kwargs)

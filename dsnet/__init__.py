"""DSNet Explain: ResNet50 / DSNet50 / DS2Net50, a verified model zoo and a Grad-CAM service.

The package's layers, lowest first (docs/architecture.md; tests/test_layers.py keeps them):
``dsnet.core`` (files, memory) -> ``dsnet.models`` (networks, kernels, registry) and ``dsnet.data``
(labelled folders, augmentation) -> ``dsnet.zoo`` (manifest, weights, loader) -> ``dsnet.cam`` (the
CAM service, images, pictures, localisation metrics) -> ``dsnet.evidence`` (training, evaluation,
figures, statistics: the command lines) -> ``app`` (the Gradio UI and its deployment).

This module is the front door for users; ``import dsnet`` does not import PyTorch (seconds): the
models load on first use (PEP 562).
"""

from __future__ import annotations

from .models import list_models, register_model

__all__ = ["DSNet", "ShortcutSpec", "get_model", "list_models", "register_model"]


def __getattr__(name: str):
    if name in ("DSNet", "ShortcutSpec"):
        from .models import networks

        return getattr(networks, name)
    raise AttributeError(f"module 'dsnet' has no attribute {name!r}")


def get_model(name: str, *, weights: str | None = None, device=None, **kwargs):
    """Build a registered model (``kwargs`` go to its builder), on ``device`` if given.

    ``weights`` names a zoo ("imagenette", "imagenet") of the manifest (``$DSNET_MANIFEST`` or the shipped
    one): the model comes with that zoo's verified weights, in eval mode, on ``device`` (default CPU). It
    is a new instance of the caller's own, free to fine-tune; the instance the app serves
    (``dsnet.zoo.loader.load``) is never handed out."""
    if weights is not None:
        from .zoo.loader import default_zoo

        if kwargs:
            raise ValueError("pass either weights= (the zoo fixes the architecture) or builder kwargs, not both")
        return default_zoo().fresh_model(weights, name, device or "cpu")
    from .models import build_model

    model = build_model(name, **kwargs)
    return model.to(device) if device is not None else model

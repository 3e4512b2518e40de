"""DSNet Explain: ResNet50 / DSNet50 / DS2Net50, a verified model zoo and a Grad-CAM service."""
from .models import DSNet, ShortcutSpec  # importing models registers the builders
from .registry import list_models, register_model

__all__ = ["DSNet", "ShortcutSpec", "get_model", "list_models", "register_model"]


def get_model(name: str, *, weights: str | None = None, **kwargs):
    """Build a registered model; ``weights`` names a zoo ("imagenette", "imagenet") to load from."""
    if weights is not None:
        from .zoo import load_model
        if kwargs:
            raise ValueError("pass either weights= (the zoo fixes the architecture) or builder kwargs, not both")
        return load_model(weights, name)
    from .registry import get_builder
    return get_builder(name)(**kwargs)

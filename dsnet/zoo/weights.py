"""Weight files and state dicts: full SHA-256 first, then safetensors or a weights-only torch load; warm starts."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dsnet.core.files import atomic_path

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


class ChecksumError(RuntimeError):
    """A weight file whose SHA-256 differs from the manifest: refused, never deserialised."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify(path: str | os.PathLike, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"SHA-256 mismatch for {path}: expected {expected}, got {actual}. The file is corrupt "
            f"or has been tampered with; it was not loaded. Delete it and fetch it again."
        )


def read_state_dict(path: str | os.PathLike, fmt: str) -> dict[str, Tensor]:
    """Deserialise a file that was already verified. No pickle code execution in either format."""
    if fmt == "safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if fmt == "torch":
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        return state["model"] if "model" in state else state  # a dsnet.evidence.train checkpoint, or a bare state dict
    raise ValueError(f"unknown weight format {fmt!r}; expected safetensors or torch")


def save_safetensors(model: nn.Module, path: str | os.PathLike, dtype: torch.dtype | None = None) -> str:
    """Write the state dict as safetensors (atomically) and return its SHA-256; ``dtype`` rounds the
    floating-point tensors to it (integers, e.g. BN's batch counts, stay as they are)."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {
        k: v.detach().to("cpu", dtype if dtype and v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    return sha256_file(path)


@dataclass(frozen=True)
class WarmStartReport:
    loaded: list[str]
    new: list[str]  # in the model, not in the ResNet state dict (the dense shortcut tensors)
    skipped: list[str]  # in both, with different shapes (e.g. fc for another class count)
    unused: list[str]  # in the ResNet state dict, not in the model

    def summary(self) -> str:
        return (
            f"warm start: loaded {len(self.loaded)} tensors; new {len(self.new)} "
            f"({', '.join(self.new[:4])}{'...' if len(self.new) > 4 else ''}); "
            f"skipped (shape) {self.skipped}; unused {self.unused}"
        )


def warm_start_from_resnet(model: nn.Module, state_dict: dict[str, Tensor]) -> WarmStartReport:
    """Copy every matching tensor of a torchvision-format ResNet state dict into ``model``."""
    own = model.state_dict()
    loaded = [k for k, v in state_dict.items() if k in own and own[k].shape == v.shape]
    skipped = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    model.load_state_dict({k: state_dict[k] for k in loaded}, strict=False)
    return WarmStartReport(
        loaded, [k for k in own if k not in state_dict], skipped, [k for k in state_dict if k not in own]
    )

"""Model registry by name (like timm): each entry carries, where it is registered, its dataset, input shape,
default reprogramming targets and (for the paper's three models) its released pretrained file.

    @register_model("lenet", dataset="mnist", input_shape=(1, 28, 28),
                    pretrained=PretrainedFile("lenet_mnist_model.pth", sha256="...", url="https://..."))
    class LeNet(nn.Module): ...

``create_model(name)`` builds it, ``model_entry(name)`` returns the :class:`ModelEntry`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "model_entry", "ModelEntry", "PretrainedFile", "official_file",
           "bundled_file", "unregister_model",
           "default_robust_layers", "unknown_model_message"]

# The official code's repository and the commit the released checkpoints were taken from
# (chris-hzc/Robustness-Reprogramming, see ../shared/pretrained/README.md).
OFFICIAL_RAW_URL = ("https://raw.githubusercontent.com/chris-hzc/Robustness-Reprogramming/"
                    "2f247bf5c4ac52770b6f4b4d4c243d9f1b4767cf/")


@dataclass(frozen=True)
class PretrainedFile:
    """A released checkpoint: its file name, sha256 and where it comes from: the URL it is published at, or, for a
    file ``bundled`` with nrpm (``nrpm/models/released/<file>``, small enough to ship), how it was made."""

    file: str
    sha256: str
    url: str
    bundled: bool = False


def bundled_file(file: str, sha256: str, source: str) -> PretrainedFile:
    """A checkpoint shipped inside the package (made by ``source``, e.g. a committed training recipe)."""
    return PretrainedFile(file, sha256, source, bundled=True)


def official_file(file: str, sha256: str) -> PretrainedFile:
    """A checkpoint released in the official repository (its raw-file URL at the pinned commit)."""
    return PretrainedFile(file, sha256, OFFICIAL_RAW_URL + file)


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about a model besides how to build it."""

    name: str
    builder: Callable[..., nn.Module]
    dataset: Optional[str] = None
    input_shape: Optional[tuple] = None
    # module-name patterns reprogrammed by default (None: every nn.Linear / nn.Conv2d)
    default_targets: Optional[tuple] = None
    pretrained: Optional[PretrainedFile] = None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, dataset: str | None = None, input_shape: Sequence[int] | None = None,
                   default_targets: Sequence[str] | None = None, pretrained: PretrainedFile | None = None
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model class or builder function under ``name`` with its metadata.

    ``dataset`` / ``input_shape`` default to the built class's ``dataset`` / ``input_shape`` attributes (the
    CLI picks matching data by them); ``default_targets`` are the module-name globs the paper reprograms
    (None: every Linear / Conv2d); ``pretrained`` the released checkpoint, if any.
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(
            name=name, builder=builder, dataset=dataset or getattr(builder, "dataset", None),
            input_shape=tuple(input_shape or getattr(builder, "input_shape", ()) or ()) or None,
            default_targets=tuple(default_targets) if default_targets is not None else None,
            pretrained=pretrained)
        return builder

    return decorator


def unregister_model(name: str) -> None:
    """Remove the model registered as ``name`` (a plugin's, or a test's); KeyError if there is none."""
    del _REGISTRY[name]


def list_models(pretrained: bool = False) -> list[str]:
    """Registered model names, sorted (``pretrained=True``: only those with a released checkpoint)."""
    return sorted(n for n, e in _REGISTRY.items() if e.pretrained is not None or not pretrained)


def unknown_model_message(name: str) -> str:
    """'unknown model ...' with the closest registered names."""
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown model {name!r}{hint} (known models: {', '.join(list_models())})"


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name`` (ValueError with close matches if unknown)."""
    if name not in _REGISTRY:
        raise ValueError(unknown_model_message(name))
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name``; ``kwargs`` go to its builder (e.g. num_classes)."""
    return model_entry(name).builder(**kwargs)


def default_robust_layers(model_name: str) -> list[str] | None:
    """Module-name patterns reprogrammed by default for ``model_name`` (None = every nn.Linear / nn.Conv2d)."""
    entry = _REGISTRY.get(model_name)
    return list(entry.default_targets) if entry is not None and entry.default_targets is not None else None

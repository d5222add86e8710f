"""Models from outside the registry, and a normalisation in front of a model that expects normalised inputs.

A model spec (``--model``) is one of

* a registry name (``lenet``, ``resnet18_narrow``, ...; see :func:`nrpm.models.list_models`);
* ``path/to/file.py:factory``: the file is imported (its folder on ``sys.path`` meanwhile, so it can import its
  neighbours) and ``factory(**model_args)`` is called;
* ``package.module:factory``: the same with an importable module;
* ``timm:NAME`` / ``torchvision:NAME``: ``timm.create_model(NAME, pretrained=False, **model_args)`` /
  ``torchvision.models.NAME(weights=None, **model_args)``, where that package is installed (neither is a
  dependency of nrpm); the weights come from the user's own checkpoint.

The factory returns an ``nn.Module`` mapping inputs in [0, 1] to logits (or log-probabilities). A model trained on
normalised inputs gets :class:`NormalizedModel` (``nn.Sequential(Normalize(mean, std), model)``) in front, so
attacks keep working in [0, 1], the RobustBench convention. Every failure is a ValueError naming the spec and the
fix.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from torch import nn

from .layers import Normalize
from .registry import create_model, list_models, model_entry, unknown_model_message

__all__ = ["ModelSpec", "parse_model_spec", "is_registry_name", "resolve_model_spec", "describe_model",
           "NormalizedModel", "with_normalization", "inner_model", "REGISTRY", "FILE", "MODULE", "LIBRARIES"]

REGISTRY, FILE, MODULE = "registry", "file", "module"
LIBRARIES = {"timm": "timm", "torchvision": "torchvision"}  # spec prefix -> the package to install
_FORMS = "a registry name, FILE.py:FACTORY, package.module:FACTORY, timm:NAME or torchvision:NAME"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``kind`` 'registry', 'file', 'module', 'timm' or 'torchvision'; ``source`` the registry
    name, file path, module or library model name; ``factory`` the attribute called (file / module only)."""

    text: str
    kind: str
    source: str
    factory: str | None = None


def _is_dotted_name(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def parse_model_spec(spec: str) -> ModelSpec:
    """The spec's parts (see the module docstring); ValueError for a malformed one, an unknown registry name or a
    factory file that does not exist. Nothing is imported yet."""
    spec = str(spec)
    if ":" not in spec:
        try:
            model_entry(spec)
        except ValueError:
            raise ValueError(f"{unknown_model_message(spec)}; or give FILE.py:FACTORY, package.module:FACTORY, "
                             f"timm:NAME or torchvision:NAME") from None
        return ModelSpec(spec, REGISTRY, spec)
    prefix, _, name = spec.partition(":")
    if prefix in LIBRARIES:
        if not name:
            raise ValueError(f"model spec {spec!r} names no model: {prefix}:NAME, e.g. {prefix}:resnet18")
        return ModelSpec(spec, prefix, name)
    source, _, factory = spec.rpartition(":")  # the last colon: a Windows path keeps its drive letter
    if not _is_dotted_name(factory):
        raise ValueError(f"model spec {spec!r}: {factory!r} is not a factory name; expected {_FORMS}")
    if source.endswith(".py"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"model file not found: {path} (--model {spec}); give an existing .py file, relative to "
                             f"the current folder or absolute")
        return ModelSpec(spec, FILE, str(path.resolve()), factory)
    if not _is_dotted_name(source):
        raise ValueError(f"model spec {spec!r}: {source!r} is neither a .py file nor a module name; expected {_FORMS}")
    return ModelSpec(spec, MODULE, source, factory)


def is_registry_name(spec: str) -> bool:
    """Whether ``spec`` is a registered model name (rather than a factory, a library model or a misspelling)."""
    return ":" not in str(spec) and str(spec) in list_models()


# ------------------------------------------------------------------------------------------ importing
def _import_file(path: Path, spec: str):
    """Import a factory file under a name of its own; its folder is on sys.path meanwhile (for its imports)."""
    name = f"nrpm_user_model_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look the module up by name
    sys.path.insert(0, str(path.parent))
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001  (any error of the user's file: report it, no traceback)
        del sys.modules[name]
        raise ValueError(f"importing {path} (--model {spec}) failed: {type(error).__name__}: {error}") from None
    finally:
        sys.path.remove(str(path.parent))
    return module


def _import_module(name: str, spec: str):
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ValueError(f"cannot import module {name!r} (--model {spec}): {error}; is it installed or on "
                         f"PYTHONPATH? A file is given as path/to/file.py:FACTORY") from None
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"importing module {name!r} (--model {spec}) failed: {type(error).__name__}: {error}") from None


def _factory(module, parsed: ModelSpec):
    target = module
    for part in parsed.factory.split("."):
        if not hasattr(target, part):
            callables = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise ValueError(f"{parsed.source} has no {parsed.factory!r} (--model {parsed.text}); callables there: "
                             f"{', '.join(callables) or 'none'}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{parsed.source}:{parsed.factory} is a {type(target).__name__}, not a function or class "
                         f"(--model {parsed.text})")
    return target


def _library_factory(parsed: ModelSpec):
    package = LIBRARIES[parsed.kind]
    try:
        library = importlib.import_module(package)
    except ImportError:
        raise ValueError(f"--model {parsed.text} needs {package}, which is not installed: pip install {package} "
                         f"(or write a factory file returning the model)") from None
    if parsed.kind == "timm":
        return lambda **kwargs: library.create_model(parsed.source, pretrained=False, **kwargs)
    import torchvision.models as models  # the package imported fine above

    if not callable(getattr(models, parsed.source, None)):
        raise ValueError(f"torchvision.models has no model {parsed.source!r} (--model {parsed.text})")
    return lambda **kwargs: getattr(models, parsed.source)(weights=None, **kwargs)


def _call(factory, parsed: ModelSpec, model_args: dict) -> nn.Module:
    try:
        model = factory(**model_args)
    except Exception as error:  # noqa: BLE001  (a user's factory may raise anything)
        given = f" with --model-arg {model_args}" if model_args else ""
        raise ValueError(f"the model factory of --model {parsed.text} raised {type(error).__name__}{given}: {error}; "
                         f"fix the factory or its --model-arg KEY=VALUE values") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"the model factory of --model {parsed.text} returned a {type(model).__name__}, not a "
                         f"torch.nn.Module: it must return the model (inputs in [0, 1], outputs logits)")
    return model


def resolve_model_spec(spec: str, model_args: dict | None = None) -> tuple[nn.Module, dict]:
    """(the model ``spec`` builds with ``model_args``, its description for results files). Weights are the
    factory's own (for registry and library models: fresh); load a checkpoint into the model afterwards."""
    parsed, model_args = parse_model_spec(spec), dict(model_args or {})
    if parsed.kind == REGISTRY:
        factory = lambda **kwargs: create_model(parsed.source, **kwargs)
    elif parsed.kind in LIBRARIES:
        factory = _library_factory(parsed)
    else:
        module = _import_file(Path(parsed.source), spec) if parsed.kind == FILE else _import_module(parsed.source, spec)
        factory = _factory(module, parsed)
    model = _call(factory, parsed, model_args)
    return model, describe_model(parsed, model, model_args)


def describe_model(parsed: ModelSpec, model: nn.Module, model_args: dict) -> dict:
    """What a spec resolved to, for results files: kind, source, factory, arguments, the model's class."""
    return {"spec": parsed.text, "kind": parsed.kind, "source": parsed.source, "factory": parsed.factory,
            "model_args": dict(model_args), "class": f"{type(model).__module__}.{type(model).__qualname__}"}


# ------------------------------------------------------------------------------------------ normalisation
class NormalizedModel(nn.Sequential):
    """``nn.Sequential(Normalize(mean, std), model)``: takes [0, 1] inputs, feeds ``model`` normalised ones.

    Normalize's mean/std are non-persistent buffers, so the state_dict is the inner model's under the prefix
    ``1.``; load checkpoints into :attr:`inner` (before wrapping) and reprogram :attr:`inner`, so that layer names
    stay the model's own.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__(Normalize(mean, std), model)
        self.normalization = {"mean": list(mean), "std": list(std)}  # as given: the buffers are float32

    @property
    def inner(self) -> nn.Module:
        return self[1]


def _check_normalization(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != len(std) or not mean:
        raise ValueError(f"normalisation needs one mean and one std per channel, got {len(mean)} means and "
                         f"{len(std)} stds")
    if not all(math.isfinite(v) for v in (*mean, *std)) or min(std) <= 0:
        raise ValueError(f"normalisation stds must be > 0 and every value finite, got mean {list(mean)}, "
                         f"std {list(std)}")


def with_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> NormalizedModel:
    """``model`` behind ``(x - mean) / std`` per channel (see :class:`NormalizedModel`)."""
    _check_normalization(list(mean), list(std))
    return NormalizedModel(model, [float(v) for v in mean], [float(v) for v in std])


def inner_model(model: nn.Module) -> nn.Module:
    """The model behind a :class:`NormalizedModel`, else ``model`` itself."""
    return model.inner if isinstance(model, NormalizedModel) else model

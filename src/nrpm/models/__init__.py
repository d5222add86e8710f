"""Model registry (by name, like timm) and checkpoint loading.

>>> from nrpm.models import create_model, list_models, load_pretrained
>>> model, info = load_pretrained("lenet")     # the authors' released MNIST LeNet
>>> model, info = resolve_model_spec("my_model.py:build", {"width": 2})   # a model of your own
"""

from .checkpoints import load_checkpoint, load_pretrained, model_from_checkpoint, resolve_pretrained_dir
from .external import (NormalizedModel, describe_model, inner_model, is_registry_name, parse_model_spec,
                       resolve_model_spec, with_normalization)
from .layers import Normalize
from .loading import LoadedModel, load_model
from .mnist import MLP2, MLP3, LeNet, LinearClassifier
from .registry import (ModelEntry, PretrainedFile, create_model, default_robust_layers, list_models, model_entry,
                       register_model)
from .resnet import BasicBlock, ResNet, resnet
from .vit import VisionTransformer, vit_tiny_cifar

__all__ = [
    "register_model",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_pretrained",
    "model_from_checkpoint",
    "load_model",
    "LoadedModel",
    "resolve_pretrained_dir",
    "model_entry",
    "ModelEntry",
    "PretrainedFile",
    "default_robust_layers",
    "resolve_model_spec",
    "describe_model",
    "parse_model_spec",
    "is_registry_name",
    "NormalizedModel",
    "with_normalization",
    "inner_model",
    "Normalize",
    "LinearClassifier",
    "MLP2",
    "MLP3",
    "LeNet",
    "BasicBlock",
    "ResNet",
    "resnet",
    "VisionTransformer",
    "vit_tiny_cifar",
]

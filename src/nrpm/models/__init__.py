"""Model registry (by name, like timm) and checkpoint loading.

>>> from nrpm.models import create_model, list_models, load_pretrained
>>> model, info = load_pretrained("lenet")     # the authors' released MNIST LeNet
"""

from .checkpoints import (PRETRAINED_FILES, load_checkpoint, load_pretrained, model_from_checkpoint,
                          resolve_pretrained_dir)
from .layers import Normalize
from .mnist import MLP2, MLP3, LeNet, LinearClassifier
from .registry import create_model, list_models, register_model
from .resnet import BasicBlock, ResNet, resnet

__all__ = [
    "register_model",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_pretrained",
    "model_from_checkpoint",
    "resolve_pretrained_dir",
    "PRETRAINED_FILES",
    "Normalize",
    "LinearClassifier",
    "MLP2",
    "MLP3",
    "LeNet",
    "BasicBlock",
    "ResNet",
    "resnet",
]

"""nrpm: robustness reprogramming (NRPM) for trained PyTorch models, without changing their weights.

Implements "Robustness Reprogramming for Representation Learning" (Hou, Torkamani, Krim, Liu; ICLR 2025).
"""

from .functional import (IRLSSettings, get_backend, get_memory_budget, robust_conv2d, robust_linear, robust_sum,
                         set_backend, set_memory_budget, sustained_work)
from .nn import RobustConv2d, RobustLinear, backward_override, lam_override
from .attention import robust_attention
from .coverage import UnreprogrammedWeightsWarning
from .nn_attention import RobustMultiheadAttention
from .reprogram import (
    ReprogramConfig,
    count_trainable_parameters,
    lam_parameters,
    lam_table,
    load_reprogramming,
    print_trainable_parameters,
    reprogram,
    robust_layers,
    save_reprogramming,
    set_lam,
    undo_reprogramming,
)

__version__ = "0.1.0"

__all__ = [
    "robust_sum", "robust_linear", "robust_conv2d", "IRLSSettings", "set_memory_budget", "get_memory_budget",
    "set_backend", "get_backend", "sustained_work",
    "RobustLinear", "RobustConv2d", "lam_override", "backward_override",
    "ReprogramConfig", "reprogram", "undo_reprogramming", "robust_layers", "lam_table", "set_lam",
    "lam_parameters", "count_trainable_parameters", "save_reprogramming", "load_reprogramming",
    "print_trainable_parameters",
    "robust_attention", "RobustMultiheadAttention", "UnreprogrammedWeightsWarning",
]

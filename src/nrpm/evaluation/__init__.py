"""Evaluation: build a (reprogrammed) model and measure clean and robust accuracy over a (lam x budget) grid.

The model is a model spec (a registry name, ``FILE.py:factory``, ``package.module:factory``, ``timm:NAME`` or
``torchvision:NAME``, see :mod:`nrpm.models.external`, with ``model_args`` for the factory and an optional input
``normalize``) with its weights (``checkpoint``: 'pretrained' for registry models, a path or 'none'; see
:mod:`nrpm.models.loading`), reprogrammed either by hand (paradigm 1: ``lams``, ``K``, ``eps``, ``layers``) or by a
*stored reprogramming*: the per-layer lam, K, eps and layers that ``nrpm reprogram`` trained, embedded in a
paradigm-3 ``model.pt`` (given as the checkpoint) or saved as ``reprogramming.pt`` (``reprogramming``, paradigm 2,
applied to the checkpoint's weights). With a stored reprogramming the grid row ``lam = "trained"`` (the default)
keeps each layer's stored lam, a numeric lam sets every layer to it, and an explicit K or eps overrides the stored
one in every layer; results.json records what was applied and from which file.

The samples are ``data`` (a dataset name, ``imagefolder:PATH`` or ``tensors:FILE``, see :mod:`nrpm.data.sources`;
default: the registry model's dataset), split ``test`` (the first N) or ``val`` (the last N training samples);
N defaults to 1000, and to the whole file for ``tensors:FILE``.

* :mod:`.prepare`: :class:`EvalSettings`, :func:`prepare_model`, :func:`load_eval_data`;
* :mod:`.grid`: measuring the cells (:func:`evaluate_grid`) and the grid's table, CSV and plot;
* :mod:`.runner`: :func:`run_eval` on the run skeleton of :mod:`nrpm.runs`: results written after every cell
  (atomically), resumed cell by cell as long as the run's identity (settings and file contents) is the same.
"""

from .grid import TRAINED, evaluate_grid, markdown_grid
from .prepare import (EvalSettings, PreparedModel, load_eval_data, load_plain_model, prepare_model,
                      resolve_device)
from .runner import RESULTS_FORMAT, model_identity, run_eval

__all__ = ["EvalSettings", "PreparedModel", "prepare_model", "load_plain_model", "load_eval_data", "resolve_device",
           "run_eval", "model_identity", "evaluate_grid", "markdown_grid", "TRAINED", "RESULTS_FORMAT"]

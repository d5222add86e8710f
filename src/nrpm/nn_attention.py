"""``RobustMultiheadAttention(nn.MultiheadAttention)``: NRPM for torch's attention module.

It keeps the parent's parameters (``in_proj_weight`` or ``q/k/v_proj_weight``, ``in_proj_bias``,
``out_proj.weight/bias``), so its state_dict has exactly the original keys (a learnable lam adds its
``*.lam_logit``, as the robust linear layers do). Two parts can be made robust, each with its own lam:

* ``"projections"``: the q, k, v in-projections (robust pattern matching, :func:`nrpm.functional.robust_linear`,
  on their rows of ``in_proj_weight``) and ``out_proj`` (a :class:`~nrpm.nn.RobustLinear` sharing its tensors);
* ``"aggregation"``: the value aggregation, :func:`nrpm.attention.robust_attention`.

Why lam lives in child modules: every lam is held by a child that *is* a :class:`~nrpm.nn.RobustMixin`
(``q_proj``, ``k_proj``, ``v_proj``: :class:`RobustProjection`; ``out_proj``: RobustLinear; ``aggregation``:
:class:`RobustAggregation`), so ``nrpm.lam_table`` / ``set_lam`` / ``lam_parameters`` / ``lam_override`` /
``backward_override`` / ``irls_override`` and the save/load of the reprogramming see them as ordinary robust layers
named e.g. ``blocks.0.attn.q_proj`` with no change to those functions. The q/k/v children own no weight: the parent
passes each its slice, as ``F.multi_head_attention_forward`` does. A part that is not reprogrammed is None.

Semantics: with every part plain (lam = 1 fixed, or K = 0) the forward is ``nn.MultiheadAttention.forward``
itself. Otherwise the module computes projections, masks, aggregation and ``out_proj`` itself: masks follow
torch (bool: True = NOT allowed; float: added to the logits; ``key_padding_mask`` (B, S), ``attn_mask`` (L, S)
or (B * num_heads, L, S)); ``is_causal`` is a hint that needs ``attn_mask``, as in torch. ``need_weights=True``
returns the softmax probabilities A (the IRLS's prior, not its final weights), averaged over heads when
``average_attn_weights``. Dropout: applied (in training) only by a plain aggregation; the robust aggregation
ignores it. ``add_bias_kv`` and ``add_zero_attn`` are refused. Nested-tensor inputs (what ``nn.TransformerEncoder``'s
inference fast path makes of a padded batch) are refused with the fix: ``encoder.use_nested_tensor = False``.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import functional as RF
from .attention import attention_probs, robust_attention
from .nn import RobustLinear, RobustMixin

__all__ = ["RobustMultiheadAttention", "RobustProjection", "RobustAggregation", "ATTENTION_PARTS",
           "PROJECTION_NAMES", "AGGREGATION_NAME"]

ATTENTION_PARTS = ("projections", "aggregation")
PROJECTION_NAMES = ("q_proj", "k_proj", "v_proj", "out_proj")
AGGREGATION_NAME = "aggregation"
_ROBUST_KEYS = ("lam", "K", "eps", "learnable_lam", "backward_mode", "detach_weights", "norm", "gamma", "delta",
                "scale")


def _robust_defaults() -> dict:
    return dict(lam=RF.DEFAULT_LAM, K=RF.DEFAULT_K, eps=RF.DEFAULT_EPS, learnable_lam=False, backward_mode="exact",
                detach_weights=False, norm=RF.DEFAULT_NORM, gamma=RF.DEFAULT_GAMMA, delta=RF.DEFAULT_DELTA,
                scale=RF.DEFAULT_SCALE)


class _LamPart(RobustMixin, nn.Module):
    """A weightless robust part: lam (fixed buffer or learnable logit), K, eps, estimator, gradient mode."""

    def __init__(self, *, lam, K, eps, learnable_lam, backward_mode, detach_weights, norm, gamma, delta, scale,
                 device=None):
        nn.Module.__init__(self)
        self._lam_device = None if device is None or torch.device(device).type == "meta" else torch.device(device)
        self._init_robust(lam, learnable_lam, backward_mode, None,
                          dict(K=K, eps=eps, detach_weights=detach_weights, norm=norm, gamma=gamma, delta=delta,
                               scale=scale))

    @property
    def weight(self) -> torch.Tensor:
        # RobustMixin reads weight.device to place lam; a part owns no weight, so answer with lam's own device
        held = next(itertools.chain(self.buffers(recurse=False), self.parameters(recurse=False)), None)
        return torch.empty(0, device=held.device if held is not None else self._lam_device)

    @classmethod
    def from_module(cls, module, **robust_kwargs):
        raise ValueError(f"{cls.__name__} is a part of RobustMultiheadAttention: use "
                         "RobustMultiheadAttention.from_module(attention)")

    def to_plain(self):
        raise ValueError(f"{type(self).__name__} is a part of RobustMultiheadAttention: undo the whole module "
                         "(RobustMultiheadAttention.to_plain() or nrpm.undo_reprogramming(model))")

    def _lam_arg(self):
        # a fixed lam as a Python float: lam == 1 then takes the exact plain path inside the functional ops
        return self.get_lam() if self.learnable_lam else self.lam_value()

    def extra_repr(self) -> str:
        kind = "learnable" if self.learnable_lam else "fixed"
        return (f"lam={self.lam_value():.4g} ({kind}), K={self.K}, eps={self.eps:g}, norm={self.norm!r}, "
                f"backward_mode={self.backward_mode!r}")


class RobustProjection(_LamPart):
    """lam etc. of one in-projection (q, k or v); ``forward(x, weight, bias)`` with the parent's slice."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        def robust(detach: bool) -> torch.Tensor:
            return RF.robust_linear(x, weight, bias, lam=self._lam_arg(), K=self.K, eps=self.eps,
                                    detach_weights=detach, **self.estimator())

        if self.is_plain():
            return F.linear(x, weight, bias)
        if self.backward_mode != "plain":
            return robust(self.backward_mode == "detached")
        plain = F.linear(x, weight, bias)
        with torch.no_grad():
            value = robust(False)
        return plain + (value - plain.detach())  # robust value, the plain projection's gradient (BPDA)


class RobustAggregation(_LamPart):
    """lam etc. of the value aggregation; ``forward(q, k, v, attn_mask, dropout_p)`` on (B, H, L, head_dim)."""

    def forward(self, q, k, v, attn_mask: torch.Tensor | None, dropout_p: float = 0.0) -> torch.Tensor:
        if self.is_plain():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        return robust_attention(q, k, v, attn_mask=attn_mask, lam=self._lam_arg(), K=self.K, eps=self.eps,
                                backward_mode=self.backward_mode, **self.estimator())


def _keep_module_forward(module, args):
    """No-op forward pre-hook. nn.TransformerEncoderLayer's inference fast path calls a fused kernel with the
    attention's weights and never calls the attention's forward; any hook on a submodule disables that path."""
    return None


def _check_supported(add_bias_kv: bool, add_zero_attn: bool) -> None:
    if add_bias_kv:
        raise ValueError("RobustMultiheadAttention supports add_bias_kv=False only (the learned bias_k / bias_v "
                         "rows are not reprogrammed); skip this module, e.g. ReprogramConfig(skip=[its name])")
    if add_zero_attn:
        raise ValueError("RobustMultiheadAttention supports add_zero_attn=False only; skip this module, e.g. "
                         "ReprogramConfig(skip=[its name])")


def _check_parts(parts) -> tuple[str, ...]:
    parts = (parts,) if isinstance(parts, str) else tuple(parts)
    unknown = [p for p in parts if p not in ATTENTION_PARTS]
    if unknown or not parts:
        raise ValueError(f"parts must be a non-empty subset of {ATTENTION_PARTS}, got {parts!r}")
    return parts


def _mha_args(m: nn.MultiheadAttention) -> dict:
    return dict(embed_dim=m.embed_dim, num_heads=m.num_heads, dropout=m.dropout, bias=m.in_proj_bias is not None,
                add_bias_kv=m.bias_k is not None, add_zero_attn=m.add_zero_attn, kdim=m.kdim, vdim=m.vdim,
                batch_first=m.batch_first)


def _share_parameters(src: nn.MultiheadAttention, dst: nn.MultiheadAttention) -> None:
    """dst holds src's parameter tensors themselves (not copies)."""
    for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias"):
        setattr(dst, name, getattr(src, name))
    dst.out_proj.weight, dst.out_proj.bias = src.out_proj.weight, src.out_proj.bias


def _as_additive(mask: torch.Tensor, dtype: torch.dtype, what: str) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)
    if not mask.is_floating_point():
        raise ValueError(f"{what} must be a bool tensor (True = not allowed) or a float tensor, got {mask.dtype}")
    return mask.to(dtype)


class RobustMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with robust projections and/or aggregation (see the module docstring).

    Robust keyword arguments (as :class:`~nrpm.nn.RobustLinear`): ``lam``, ``K``, ``eps``, ``learnable_lam``,
    ``backward_mode``, ``detach_weights``, ``norm``, ``gamma``, ``delta``, ``scale``; ``parts``: which of
    ``("projections", "aggregation")`` are robust; ``lam_per_part``: {part name: lam} for some of ``q_proj``,
    ``k_proj``, ``v_proj``, ``out_proj``, ``aggregation``.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None, **robust):
        parts = robust.pop("parts", ATTENTION_PARTS)
        lam_per_part: dict[str, float] | None = robust.pop("lam_per_part", None)
        _check_supported(add_bias_kv, add_zero_attn)
        unknown = sorted(set(robust) - set(_ROBUST_KEYS))
        if unknown:
            raise ValueError(f"unknown RobustMultiheadAttention option {unknown[0]!r}; valid: {_ROBUST_KEYS}")
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, add_bias_kv=False, add_zero_attn=False,
                         kdim=kdim, vdim=vdim, batch_first=batch_first, device=device, dtype=dtype)
        for name in PROJECTION_NAMES[:3] + (AGGREGATION_NAME,):
            self.register_module(name, None)
        if parts is not None:  # None: a shell whose parts from_module adds once the parameters are shared
            self._add_parts(_check_parts(parts), {**_robust_defaults(), **robust}, dict(lam_per_part or {}), device)
        self.register_forward_pre_hook(_keep_module_forward)

    def _add_parts(self, parts, robust: dict, lam_per_part: dict, device) -> None:
        names = (PROJECTION_NAMES if "projections" in parts else ()) + \
            ((AGGREGATION_NAME,) if "aggregation" in parts else ())
        unknown = sorted(set(lam_per_part) - set(names))
        if unknown:
            raise ValueError(f"lam_per_part names {unknown}, which are not robust parts; robust parts: {names}")
        for name in names:
            kwargs = {**robust, "lam": lam_per_part.get(name, robust["lam"])}
            if name == "out_proj":
                self.out_proj = RobustLinear.from_module(self.out_proj, **kwargs)
            else:
                part_type = RobustAggregation if name == AGGREGATION_NAME else RobustProjection
                self.register_module(name, part_type(**kwargs, device=device))

    @classmethod
    def from_module(cls, module: nn.MultiheadAttention, **kwargs) -> "RobustMultiheadAttention":
        """A robust attention sharing (not copying) ``module``'s parameter tensors; kwargs as the constructor's."""
        if not isinstance(module, nn.MultiheadAttention) or isinstance(module, RobustMultiheadAttention):
            raise ValueError(f"RobustMultiheadAttention.from_module needs a plain nn.MultiheadAttention, got "
                             f"{type(module).__name__}")
        _check_supported(module.bias_k is not None, module.add_zero_attn)
        parts = _check_parts(kwargs.pop("parts", ATTENTION_PARTS))
        lam_per_part = dict(kwargs.pop("lam_per_part", None) or {})
        new = cls(**_mha_args(module), device="meta", dtype=module.out_proj.weight.dtype, parts=None, **kwargs)
        _share_parameters(module, new)
        # the parts' lams go where the weights are
        new._add_parts(parts, {**_robust_defaults(), **kwargs}, lam_per_part, module.out_proj.weight.device)
        new.train(module.training)
        return new

    def to_plain(self) -> nn.MultiheadAttention:
        """The plain nn.MultiheadAttention holding this module's parameter tensors (undoes the reprogramming)."""
        plain = nn.MultiheadAttention(**_mha_args(self), device="meta", dtype=self.out_proj.weight.dtype)
        _share_parameters(self, plain)
        plain.train(self.training)
        return plain

    def robust_parts(self) -> dict[str, RobustMixin]:
        """{child name: robust part} of the parts that are reprogrammed, in module order."""
        return {n: m for n, m in self.named_children() if isinstance(m, RobustMixin)}

    def _in_weights(self):
        if self.in_proj_weight is not None:  # packed (kdim == vdim == embed_dim), as torch stores it
            return self.in_proj_weight.chunk(3)
        return self.q_proj_weight, self.k_proj_weight, self.v_proj_weight

    def _in_biases(self):
        return self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if all(part.is_plain() for part in self.robust_parts().values()):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        if any(t.is_nested for t in (query, key, value)):
            # the robust layers (attention and linear) work on padded tensors: fail here with the fix, not later
            raise ValueError("robust layers do not take nested tensors, which nn.TransformerEncoder makes of a padded "
                             "batch in inference: set encoder.use_nested_tensor = False (or "
                             "torch.backends.mha.set_fastpath_enabled(False))")
        return self._robust_forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                    average_attn_weights, is_causal)

    def _to_batch_first(self, t: torch.Tensor, batched: bool) -> torch.Tensor:
        if not batched:
            return t.unsqueeze(0)
        return t if self.batch_first else t.transpose(0, 1)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, E) -> (B, H, L, head_dim)."""
        return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def _project(self, name: str, x, weight, bias):
        part = getattr(self, name)
        return F.linear(x, weight, bias) if part is None else part(x, weight, bias)

    def _robust_forward(self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                        is_causal):
        batched = query.dim() == 3
        query, key, value = (self._to_batch_first(t, batched) for t in (query, key, value))
        (B, L, E), S = query.shape, key.shape[1]
        heads = [self._heads(self._project(name, x, w, b)) for name, x, w, b in
                 zip(PROJECTION_NAMES, (query, key, value), self._in_weights(), self._in_biases())]
        mask = self._merged_mask(attn_mask, key_padding_mask, B, L, S, is_causal, batched, heads[0].dtype)
        dropout_p = self.dropout if self.training else 0.0
        if self.aggregation is None:
            out = F.scaled_dot_product_attention(*heads, attn_mask=mask, dropout_p=dropout_p)
        else:
            out = self.aggregation(*heads, mask, dropout_p)
        out = self.out_proj(out.transpose(1, 2).reshape(B, L, E))
        out = out if not batched else (out if self.batch_first else out.transpose(0, 1))
        weights = self._probs(heads[0], heads[1], mask, average_attn_weights) if need_weights else None
        if not batched:
            out, weights = out.squeeze(0), (None if weights is None else weights.squeeze(0))
        return out, weights

    @staticmethod
    def _probs(q, k, mask, average: bool) -> torch.Tensor:
        probs = attention_probs(q, k, mask)
        return probs.mean(1) if average else probs

    def _merged_mask(self, attn_mask, key_padding_mask, B, L, S, is_causal, batched, dtype):
        """attn_mask and key_padding_mask as one float mask broadcasting to (B, H, L, S), or None."""
        if is_causal and attn_mask is None:
            raise ValueError("is_causal=True is a hint that attn_mask is the causal mask: pass attn_mask too "
                             "(as nn.MultiheadAttention requires)")
        mask = None
        if attn_mask is not None:
            mask = _as_additive(attn_mask, dtype, "attn_mask")
            if mask.shape == (L, S):
                mask = mask.view(1, 1, L, S)
            elif mask.shape == (B * self.num_heads, L, S):
                mask = mask.view(B, self.num_heads, L, S)
            else:
                raise ValueError(f"attn_mask must have shape ({L}, {S}) or ({B * self.num_heads}, {L}, {S}) "
                                 f"(L, S or batch * num_heads, L, S), got {tuple(attn_mask.shape)}")
        if key_padding_mask is not None:
            padding = _as_additive(key_padding_mask if batched else key_padding_mask.unsqueeze(0), dtype,
                                   "key_padding_mask")
            if padding.shape != (B, S):
                raise ValueError(f"key_padding_mask must have shape ({B}, {S}) (batch, source length), got "
                                 f"{tuple(key_padding_mask.shape)}")
            padding = padding.view(B, 1, 1, S)
            mask = padding if mask is None else mask + padding
        return mask

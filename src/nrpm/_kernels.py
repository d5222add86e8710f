"""The NRPM core's kernels (the IRLS forward and its analytic backward) and the backend that runs them.

One layout serves linear layers and convolutions. Outputs come in blocks of ``LANES`` independent outputs that
share their weights and differ only in their inputs (16 images of a batch, 16 rows of a linear layer's input, or
16 output positions of one image):

    x  (N, G, Cg, Hp, Wp, LANES)   inputs: N blocks, G groups, Cg channels per group, a (padded) Hp x Wp plane
    w  (G, Og, Cg, kh, kw)         weights
    z  (N, Ho, Wo, G, Og, LANES)   one value per output

and the votes of output (n, ho, wo, g, o, lane) are ``x[n, g, c, ho*sh + i*dh, wo*sw + j*dw, lane] * w[g, o, c, i, j]``
over the receptive field (c, i, j): ``geom = (kh, kw, sh, sw, dh, dw)``. A linear layer is a 1x1 "convolution"
on a 1x1 plane; a convolution runs either directly on the zero-padded image with the batch in the lanes (no
unfold: the receptive fields are strided views), or on unfold's columns with the output positions in the lanes
(small batches, strided convolutions).

Why this layout: a compiled kernel's loops follow the output's memory order, so the innermost loop runs over the
lanes (one full AVX-512 vector of outputs, no tail, no horizontal sum), the reduction over the receptive field
sits just outside it (a weight is one broadcast scalar), and a block's receptive field stays in L1/L2 while every
output channel reuses it. The same layout gives coalesced loads on a GPU. The lane width is static and every
other size dynamic, so one compiled kernel serves every layer and batch size of a given kernel geometry; fully
dynamic or unblocked versions measured 2-3x slower on CPU.

Two ways to run the same Python kernels:

* compiled: ``torch.compile`` (Inductor: C++/OpenMP on CPU, Triton on CUDA). Each IRLS step becomes one fused
  reduction that builds the votes from broadcast loads, so votes are never materialised and no chunking is needed.
* eager: the kernels as plain PyTorch ops over chunks sized from the memory budget (the votes of a chunk are
  materialised). Used for small problems (not worth compiling), when compilation is unavailable or fails, and when
  forced with ``set_backend("eager")`` / ``NRPM_BACKEND=eager``.

Which one runs, the memory budget and the compiled kernels are the state of :mod:`nrpm._backend`; this module is
the math and the entry points (:func:`run_forward`, :func:`run_backward`) that take one IRLS run's ``settings``
(an :class:`nrpm.functional.IRLSSettings`: K, eps, detach_weights, estimator).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import STATE, CompileFailed
from ._weightings import (broadcast_params, clamp_masks, clamped, estimator_params, per_output_params,
                          runtime_estimator, signed_like, weights, with_relative_params)

__all__ = ["LANES", "ONE_BY_ONE", "irls_forward", "irls_grad_x", "positions_first", "irls_grad_w_per_block",
           "run_forward", "step_statistics", "run_backward", "estimator_params", "weights"]

LANES = 16
ONE_BY_ONE = (1, 1, 1, 1, 1, 1)  # geom of linear layers and of unfold's columns

# The eager kernels hold about this many vote-sized temporaries at once.
EAGER_TEMPORARIES_PER_VOTE = 8


# ---------------------------------------------------------------------------------------------------- kernels
def receptive_fields(x, geom, Ho, Wo):
    """View x (N, G, Cg, Hp, Wp, L) as (N, Ho, Wo, G, 1, Cg, kh, kw, L): each output's inputs, without copying."""
    kh, kw, sh, sw, dh, dw = geom
    N, G, Cg, Hp, Wp, L = x.shape
    s_n, s_g, s_c, s_h, s_w, s_l = x.stride()  # the eager kernels get slices of x
    # one as_strided rather than unfold + slicing: symbolic-shape tracing of the latter took seconds per kernel
    return x.as_strided((N, Ho, Wo, G, 1, Cg, kh, kw, L),
                        (s_n, sh * s_h, sw * s_w, s_g, 0, s_c, dh * s_h, dw * s_w, s_l))


def _per_output(t):
    """(N, Ho, Wo, G, Og, L) -> broadcastable against votes (N, Ho, Wo, G, Og, Cg, kh, kw, L)."""
    return t[:, :, :, :, :, None, None, None, :]


_FIELD = (5, 6, 7)  # the receptive-field dims (Cg, kh, kw) of a vote tensor


def irls_scale(votes, z0, inv_d, eps: float):
    """Per-output scale of the relative estimators: the mean absolute residual of the votes at the LPM start,
    plus eps (so it is never zero), shaped like z0."""
    return (votes - _per_output(z0 * inv_d)).abs().mean(_FIELD) + eps


def irls_forward(x, w, z0, geom, K: int, eps: float, with_s: bool, with_q: bool, est=None):
    """Run K IRLS steps from z0. Returns ([z_1..z_K], [S_1..S_K], [Q_1..Q_K], [scale]) (S, Q empty unless asked,
    scale only for a relative estimator).

    Step k, from z = z_{k-1}:  r_d = y_d - z/D,  w_d = phi(|r_d|),  S_k = sum w_d,  z_k = D sum(w_d y_d) / S_k,
    with phi(a) = 1/(a + eps) (L1, ``est`` None) or a clamped weighting (:func:`estimator_params`).
    Q_k = -sum_d phi'(|r_d|) sign(r_d) (y_d - z_k/D) is what the backward needs for dz_k/dz_{k-1} = Q_k / S_k; it
    is accumulated here, as sum -phi' |r| + delta * sum sign(r) (-phi') with delta = (z_{k-1} - z_k)/D, because it
    needs the same w_d and would otherwise cost the backward one more pass over the votes per step.
    """
    D = w.shape[2] * w.shape[3] * w.shape[4]
    inv_d = 1.0 / D
    votes = receptive_fields(x, geom, z0.shape[1], z0.shape[2]) * w[None, None, None, :, :, :, :, :, None]
    scales = [irls_scale(votes, z0, inv_d, eps)] if est is not None and est.relative else []
    params = None if est is None else estimator_params(est, _per_output(scales[0]) if scales else None, eps)
    z = z0
    zs, ss, qs = [], [], []
    for _ in range(K):
        r = votes - _per_output(z * inv_d)
        abs_r = r.abs()
        weight, slope = weights(abs_r, eps, params, with_q)
        s = weight.sum(_FIELD)
        z_next = D * (weight * votes).sum(_FIELD) / s
        if with_s:
            ss.append(s)
        if with_q:
            qs.append((slope * abs_r).sum(_FIELD) + (z - z_next) * inv_d * signed_like(slope, r).sum(_FIELD))
        z = z_next
        zs.append(z)
    return zs, ss, qs, scales


def _step_factors(coef, cdelta, eps: float, est):
    """The per-step output-sized factors of :func:`_vote_gradient`, computed before they are broadcast against
    the votes: (first, c_k delta_k) with first = eps c_k (the L1 bracket folded; every estimator's term is built
    on it)."""
    return [c * eps for c in coef], list(cdelta)


def _vote_gradient(votes, z_prev, first, cdelta, eps: float, detach: bool, est=None, scale=None,
                   sign_bits: bool = True):
    """dL/d(vote) of the unrolled IRLS from per-step output-sized factors (already broadcast against votes).

    For step k (r, w_d from z_{k-1}, phi' = dw/d|r|):  dz_k/dy_d = (D/S_k) (w_d + phi'_d (|r_d| + sign(r_d)
    delta_k)); for L1 (phi' = -w^2, w |r| = 1 - eps w) that is (D/S_k) w_d^2 (eps - sign(r_d) delta_k). With
    c_k = g_k D/S_k (g_k = dL/dz_k), the gradient of a vote is the sum over k of c_k times that bracket; z_0's
    share (dL/dz_0, passed to every vote) is returned to z_0's own graph (the plain layer's backward) by the
    caller instead of being added here. The relative estimators' scale is held constant (no gradient).

    ``z_prev[k] = z_{k-1}/D``, ``cdelta[k] = c_k delta_k`` and ``first[k]`` = eps c_k (see
    :func:`_step_factors`) for the steps k = 1..K, so that an L1 step costs per vote one compare-
    free sign (:func:`signed_like`), one subtraction and one division: (eps c - sign(r) c delta) / (|r| + eps)^2.
    ``detach``: the weights w_d are constants and only the last step passes gradient, dz_K/dy_d = c_K w_d; the
    lists then hold that step alone (``first`` = c_K). ``sign_bits``: the sign as :func:`signed_like` (the
    input-gradient pass) or as ``torch.sign`` (the weight-gradient pass, where the bit form measured 6-10% slower).
    """
    signed = signed_like if sign_bits else (lambda t, r: torch.sign(r) * t)
    params = None if est is None else estimator_params(est, scale, eps)
    if detach:
        if params is None:
            return first[0] / ((votes - z_prev[0]).abs() + eps)
        return first[0] * weights((votes - z_prev[0]).abs(), eps, params, False)[0]
    grad = None
    for zp, c, cd in zip(z_prev, first, cdelta):
        r = votes - zp
        abs_r = r.abs()
        a = abs_r + eps
        term = (c - signed(cd, r)) / (a * a)
        if params is not None:
            # unclamped, w = u + beta and -w' = u^2, so with u |r| = 1 - eps u the bracket
            # c w - (-w')(c |r| + sign(r) c delta) is c beta + u^2 (eps c - sign(r) c delta): the L1 term
            # shifted (c = first / eps); clamped, it is c lo or c hi (w' = 0 there)
            if not (isinstance(params.beta_e, float) and params.beta_e == 0.0):
                term = term + c * params.beta_e
            term = clamped(term, clamp_masks(a, params), (None if params.lo is None else c * params.lo_e,
                                                          None if params.hi is None else c * params.hi_e))
        grad = term if grad is None else grad + term
    return grad


def positions_first(x, crop=(0, 0)):
    """x (N, G, Cg, Hp, Wp, L) -> (N, Hp - 2 ch, Wp - 2 cw, G, Cg, L), contiguous: the layout :func:`irls_grad_x`
    reads, less ``crop = (ch, cw)`` rows and columns on each side (zero padding whose gradient is not wanted)."""
    ch, cw = crop
    return x.permute(0, 3, 4, 1, 2, 5)[:, ch:x.shape[3] - ch, cw:x.shape[4] - cw].contiguous()


def irls_grad_x(xp, w, z_prev, coef, cdelta, scale, geom, eps: float, detach: bool, est=None, block: int = 1,
                crop=(0, 0)):
    """dL/dx for stride 1 (sh = sw = 1), from x in the positions-first layout ``xp`` (N, Hp, Wp, G, Cg, L)
    (:func:`positions_first`, with the same ``crop``); returned in x's layout (N, G, Cg, Hp, Wp, L), as a view,
    for the positions of ``xp`` (x's plane less the crop; the caller puts them in place).

    ``crop = (ch, cw)`` (static): x's outer ch rows and cw columns on each side are zero padding whose gradient
    the caller discards; it is not computed (the caller returns 0 there). It saves the gather over the border, which on
    small planes is most of it (a 4x4 plane padded to 6x6: 36 positions gathered for 16 wanted).

    Gathered per input rather than scattered from the outputs: input (hp, wp) is in the receptive field of the
    outputs (hp - i*dh, wp - j*dw), so its gradient is a reduction over (o, i, j) of the vote gradients found at
    those outputs. With the statistics zero-padded around the plane (coef = 0 there: no contribution) and the
    kernel flipped, those outputs are again a strided view, and the vote value is x itself times the weight.

    Why positions first: a compiled kernel's loops follow its inputs' memory order; with x in its own layout the
    input channel was the outer loop, so every channel re-streamed the whole plane's statistics (3 per step and
    output) from L3; positions first, the 3x3 window of statistics of one position stays in L2 while all the
    channels of that position read it (measured 1.2x faster; benchmarks/README.md).

    ``block`` (static, dividing Cg): the channels split in that many slices, one reduction each, fused into one
    loop nest; the reductions share every load of the statistics, so each loaded statistic serves ``block``
    votes. Measured 4-8% faster with 2 on conv64, but with the channel count dynamic Inductor (torch 2.13) fails
    on the slices for some shapes (ValueRangeError in its symbolic shapes), so the compiled backend uses 1.
    """
    kh, kw, _, _, dh, dw = geom
    N, Hp, Wp, G, Cg, L = xp.shape  # Hp, Wp: the positions computed (x's plane less the crop)
    ch, cw = crop
    ph, pw = (kh - 1) * dh - ch, (kw - 1) * dw - cw  # a negative pad crops

    def around(t):  # (N, Ho, Wo, G, Og, L) -> (N, Hp, Wp, G, Og, 1, kh, kw, L): the outputs that read each input
        t = F.pad(t, (0, 0, 0, 0, 0, 0, pw, pw, ph, ph)).contiguous()
        _, Hs, Ws, _, Og, _ = t.shape
        s_o, s_w = L, G * Og * L
        s_h = Ws * s_w
        return t.as_strided((N, Hp, Wp, G, Og, 1, kh, kw, L),
                            (Hs * s_h, s_h, s_w, Og * s_o, s_o, 0, dh * s_h, dw * s_w, 1))

    first, cdelta = (coef, cdelta) if detach else _step_factors(coef, cdelta, eps, est)
    stats = ([around(t) for t in z_prev], [around(t) for t in first], [around(t) for t in cdelta])
    scale = around(scale[0]) if scale else None
    est = broadcast_params(est, around)
    flipped = w.flip(3, 4)
    step = Cg // block
    parts = []
    for q in range(block):  # channels q*step.. of (1, 1, 1, G, Og, Cg, kh, kw, 1) and (N, Hp, Wp, G, 1, Cg, 1, 1, L)
        w_q = flipped[:, :, q * step:(q + 1) * step][None, None, None, :, :, :, :, :, None]
        votes = xp[:, :, :, :, q * step:(q + 1) * step][:, :, :, :, None, :, None, None, :] * w_q
        grad = _vote_gradient(votes, *stats, eps, detach, est, scale)
        parts.append((grad * w_q).sum((4, 6, 7)))  # (N, Hp, Wp, G, Cg/block, L)
    out = parts[0] if block == 1 else torch.cat(parts, 4)
    return out.permute(0, 3, 4, 1, 2, 5)  # (N, G, Cg, Hp, Wp, L): the uncropped positions only


def irls_grad_w_per_block(x, w, z_prev, coef, cdelta, scale, geom, eps: float, detach: bool, est=None):
    """dL/dw per block of lanes (N, G, Og, Cg, kh, kw); the caller sums over N.

    Per block on purpose: summing over the blocks inside the kernel makes every weight re-read all the per-output
    statistics of the batch (measured 2-10x slower).
    """
    fields = receptive_fields(x, geom, z_prev[0].shape[1], z_prev[0].shape[2])
    votes = fields * w[None, None, None, :, :, :, :, :, None]
    first, cdelta = (coef, cdelta) if detach else _step_factors(coef, cdelta, eps, est)
    est = broadcast_params(est, _per_output)
    grad = _vote_gradient(votes, [_per_output(t) for t in z_prev], [_per_output(t) for t in first],
                          [_per_output(t) for t in cdelta], eps, detach, est,
                          _per_output(scale[0]) if scale else None, sign_bits=False)
    return (grad * fields).sum((1, 2, 8))


# The sizes that vary between layers and batches are compiled as dynamic; LANES, G and the geometry stay static.
_X_DYN, _XP_DYN, _W_DYN, _Z_DYN = (0, 2, 3, 4), (0, 1, 2, 4), (1, 2), (0, 1, 2, 4)


def _plain(*tensors) -> list[torch.Tensor]:
    # Detached tensors are not views: Dynamo would otherwise guard on (and recompile for) each view's base
    # (a weight reshaped for a convolution vs for a linear layer). Autograd is handled by the caller.
    return [t.detach() for t in tensors]


# ------------------------------------------------------------------------------------------------ eager runs
def _eager_chunks(x, w, z_shape, geom, budget_bytes):
    """(block, output-row, out-channel) slices whose materialised votes stay within the memory budget.

    Output rows are split only for 1x1 geometries (their rows read disjoint input rows); a single (block, channel)
    of a spatial kernel is the smallest chunk.
    """
    N, Ho, Wo, G, Og, L = z_shape
    field = w.shape[2] * w.shape[3] * w.shape[4]
    max_votes = max(1, budget_bytes // (x.element_size() * EAGER_TEMPORARIES_PER_VOTE))
    row = G * Wo * field * L  # votes of one output row of one block, one channel
    o_chunk = max(1, min(Og, max_votes // (row * Ho)))
    rows = max(1, max_votes // (row * o_chunk)) if geom == ONE_BY_ONE else Ho
    h_chunk = min(Ho, rows)
    n_chunk = max(1, min(N, rows // Ho)) if h_chunk == Ho else 1
    for n0 in range(0, N, n_chunk):
        for h0 in range(0, Ho, h_chunk):
            for o0 in range(0, Og, o_chunk):
                yield slice(n0, n0 + n_chunk), slice(h0, h0 + h_chunk), slice(o0, o0 + o_chunk)


def _eager_forward(x, w, z0, geom, settings, with_s, with_q, budget_bytes):
    K, est = settings.K, settings.estimator
    n_scale = int(est is not None and est.relative)
    outs = [torch.empty_like(z0) for _ in range(K * (1 + with_s + with_q) + n_scale)]
    for ns, hs, os_ in _eager_chunks(x, w, z0.shape, geom, budget_bytes):
        xs = x[ns, :, :, hs] if geom == ONE_BY_ONE else x[ns]
        parts = irls_forward(xs, w[:, os_], z0[ns, hs, :, :, os_], geom, K, settings.eps, with_s, with_q, est)
        for out, part in zip(outs, parts[0] + parts[1] + parts[2] + parts[3]):
            out[ns, hs, :, :, os_] = part
    n_q = K + K * with_s
    return outs[:K], outs[K:n_q], outs[n_q:n_q + K * with_q], outs[n_q + K * with_q:]


def _eager_backward(x, w, stats, geom, settings, need_x, need_w, budget_bytes, crop):
    z_prev = stats[0]
    vote_args = (geom, settings.eps, settings.detach_weights, settings.estimator)
    grad_x = torch.zeros_like(x) if need_x else None
    grad_w = torch.zeros_like(w) if need_w else None
    for ns, hs, os_ in _eager_chunks(x, w, z_prev[0].shape, geom, budget_bytes):
        part = lambda ts: [t[ns, hs, :, :, os_] for t in ts]  # noqa: E731
        chunk = tuple(part(s) for s in stats)
        xs = x[ns, :, :, hs] if geom == ONE_BY_ONE else x[ns]
        if need_x:
            gx = irls_grad_x(positions_first(xs, crop), w[:, os_], *chunk, *vote_args, 1, crop)
            if crop != (0, 0):
                grad_x[ns, :, :, crop[0]:x.shape[3] - crop[0], crop[1]:x.shape[4] - crop[1]] += gx
            elif geom == ONE_BY_ONE:
                grad_x[ns, :, :, hs] += gx
            else:
                grad_x[ns] += gx
        if need_w:
            grad_w[:, os_] += irls_grad_w_per_block(xs, w[:, os_], *chunk, *vote_args).sum(0)
    return grad_x, grad_w


# ------------------------------------------------------------------------------------------------ entry points
def _vote_steps(w, z_shape, steps):
    N, Ho, Wo, G, Og, L = z_shape
    return N * Ho * Wo * L * G * Og * w.shape[2] * w.shape[3] * w.shape[4] * max(steps, 1)


def run_forward(x, w, z0, geom, settings, with_stats: bool = False, budget_bytes: int | None = None):
    """irls_forward on the chosen backend, with ``settings``' K, eps and estimator. Raises CompileFailed if
    compilation fails (the caller reruns).

    ``with_stats``: also the per-step statistics the backward needs (S always, Q unless settings.detach_weights).
    ``budget_bytes``: the eager kernels' working memory (default: the backend's, :func:`nrpm.set_memory_budget`).
    """
    x, w, z0 = _plain(x, w, z0)
    K, eps = settings.K, settings.eps
    with_s, with_q = with_stats, with_stats and not settings.detach_weights
    if STATE.will_compile(x.device, _vote_steps(w, z0.shape, K)):
        est, kind = runtime_estimator(settings.estimator, z0, eps)
        return STATE.call_compiled(irls_forward, ("forward", geom, K, eps, with_s, with_q, kind),
                                   (x, w, z0, geom, K, eps, with_s, with_q, est),
                                   [((x,), _X_DYN), ((w,), _W_DYN), ((z0,), _Z_DYN)])
    budget = STATE.memory_budget_bytes if budget_bytes is None else budget_bytes
    return _eager_forward(x, w, z0, geom, settings, with_s, with_q, budget)


def step_statistics(zs, ss, qs, scale, grad_out, D: int, detach: bool):
    """The chain rule through the K unrolled steps, on output-sized tensors: (stats for run_backward, dL/dz0).

    ``zs = [z0, z1, ..., zK]``; ``ss`` / ``qs`` the forward's per-step statistics (irls_forward with_s / with_q);
    ``scale`` [] or the relative estimators' per-output scale; D the votes per output. With ``detach`` only the
    last step's weights are differentiated through and z0 gets no gradient (None).
    """
    K = len(zs) - 1
    coef, cdelta, g = [None] * K, [None] * K, grad_out.contiguous()
    for k in range(K, 0, -1):
        coef[k - 1] = g * D / ss[k - 1]
        if detach:
            break
        cdelta[k - 1] = coef[k - 1] * ((zs[k - 1] - zs[k]) / D)  # c_k delta_k: one factor fewer per vote
        g = g * qs[k - 1] / ss[k - 1]
    z_prev = [z / D for z in zs[:K]]
    if detach:
        return (z_prev[-1:], coef[-1:], [], scale), None
    return (z_prev, coef, cdelta, scale), g


def run_backward(x, w, stats, geom, settings, need_x: bool, need_w: bool, crop=(0, 0),
                 budget_bytes: int | None = None):
    """(dL/dx, dL/dw) of the unrolled IRLS on the chosen backend; None for a gradient not needed.

    ``stats = (z_prev, coef, cdelta, scale)``: per step z_{k-1}/D, c_k and c_k delta_k (see ``_vote_gradient``;
    scale: [] or the relative estimators' per-output scale); ``settings``: the forward's (its eps,
    detach_weights and estimator). A compilation failure here falls back to the eager kernels directly (the
    forward already ran in this layout). ``crop = (ch, cw)``: x's outer rows and columns that are zero padding
    whose gradient the caller discards (not computed, returned as 0; see irls_grad_x). ``budget_bytes``: as in
    :func:`run_forward`.
    """
    x, w = _plain(x, w)
    stats = tuple(_plain(*s) for s in stats)
    budget = STATE.memory_budget_bytes if budget_bytes is None else budget_bytes
    if STATE.will_compile(x.device, _vote_steps(w, stats[0][0].shape, len(stats[0]))):
        try:
            return _compiled_backward(x, w, stats, geom, settings, need_x, need_w, budget, crop)
        except CompileFailed:
            pass
    return _eager_backward(x, w, stats, geom, settings, need_x, need_w, budget, crop)


def _compiled_backward(x, w, stats, geom, settings, need_x, need_w, budget_bytes, crop):
    # one kernel per gradient: a vote gradient feeding two reductions would be materialised (vote-sized)
    steps, eps, detach = len(stats[0]), settings.eps, settings.detach_weights
    est, kind = runtime_estimator(settings.estimator, x, eps)
    est = with_relative_params(est, stats[3], eps)
    grad_x = grad_w = None
    if need_x:
        xp = positions_first(x, crop)  # one input-sized copy, outside the kernel: it fixes the kernel's loop order
        block = 1  # see irls_grad_x: 2 channel slices hit an Inductor symbolic-shape error (torch 2.13)
        grad_x = STATE.call_compiled(irls_grad_x, ("grad_x", geom, steps, eps, detach, kind, block, tuple(crop)),
                                     (xp, w, *stats, geom, eps, detach, est, block, tuple(crop)),
                                     [((xp,), _XP_DYN), ((w,), _W_DYN),
                                      ([t for s in stats for t in s] + per_output_params(est), _Z_DYN)])
        if crop != (0, 0):  # the border outside the kernel: padding a reduction's output inside it failed to compile
            full = x.new_zeros(x.shape)
            full[:, :, :, crop[0]:x.shape[3] - crop[0], crop[1]:x.shape[4] - crop[1]] = grad_x
            grad_x = full
    if need_w:
        grad_w = _compiled_grad_w(x, w, stats, geom, (eps, detach, est, kind), budget_bytes)
    return grad_x, grad_w


def _compiled_grad_w(x, w, stats, geom, vote_settings, budget_bytes):
    """dL/dw summed over blocks of lanes, in chunks of blocks that bound the per-block partial sums."""
    eps, detach, est, kind = vote_settings
    steps = len(stats[0])
    per_block = w.numel() * x.element_size()
    n_chunk = max(1, budget_bytes // per_block)
    grad_w = torch.zeros_like(w)
    for n0 in range(0, x.shape[0], n_chunk):
        xs = x[n0:n0 + n_chunk]
        part = tuple([t[n0:n0 + n_chunk] for t in s] for s in stats)
        est_part = broadcast_params(est, lambda t: t[n0:n0 + n_chunk])  # noqa: B023 - used at once
        grad_w += STATE.call_compiled(irls_grad_w_per_block, ("grad_w", geom, steps, eps, detach, kind),
                                      (xs, w, *part, geom, eps, detach, est_part),
                                      [((xs,), _X_DYN), ((w,), _W_DYN),
                                       ([t for s in part for t in s] + per_output_params(est_part), _Z_DYN)]).sum(0)
    return grad_w

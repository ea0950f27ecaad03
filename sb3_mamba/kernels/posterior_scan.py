"""The RSSM posterior unroll as one autograd ``Function`` with a hand-written backward.

MAMBA unrolls the posterior over the whole sampled prefix (H' + 1 steps of
a batch of 16), so its world-model update is a long chain of small matmuls
and elementwise ops. Through autograd every op of every step records a graph
node, and every step computes and accumulates its own weight gradients
(one ``(3D, 16) x (16, hidden + D)`` product plus an add per step for the GRU
alone). This module runs the same computation as
:meth:`RSSM.obs_step <sb3_mamba.rssm.RSSM.obs_step>` in a loop without a graph:

* forward: per step one ``img_in`` layer, the GRU cell and the posterior
  layers, writing into preallocated time-major buffers; latents are sampled
  with :func:`sb3_mamba.distributions.one_hot_sample` (straight-through in the backward);
* backward: per step only the gradients that carry the recursion (to the
  previous deterministic and stochastic state), with fused ATen backward
  kernels (``native_layer_norm_backward``, ``silu_backward``, ...);
* every weight gradient after the loop, as one matmul over all ``T x B`` rows.

On CPU each step's work besides the GRU matmul runs in one call of the C
kernels of :mod:`sb3_mamba.kernels.native` (:class:`NativeScan`: ~30 ATen ops forward
and ~35 backward per step become one call each, and the backward recomputes
the gates from the saved matmul outputs instead of storing them); on GPU, or
without a C compiler, the steps run on ATen ops (:class:`PosteriorScan`).
``tests/test_kernels.py`` checks values and gradients of both against the
eager step loop (:meth:`RSSM.observe <sb3_mamba.rssm.RSSM.observe>`). Shapes: ``T`` time, ``B`` batch, ``D``
deter, ``S x C`` latents (``SC = S * C``), ``A`` action, ``U`` the cell's hidden width (``docs/shapes.md``).
Under autocast the GRU's matmuls run in the autocast dtype, everything else in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

import sb3_mamba.distributions as distributions
from sb3_mamba.kernels import native
from sb3_mamba.kernels.gru import folded_norm_bias

aten = torch.ops.aten
aten_mkldnn = torch.ops.mkldnn


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return aten.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)


class _Matmul:
    """``x @ w.T`` in the compute dtype (float32, or the autocast dtype), result in float32."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def weight(self, w: Tensor) -> Tensor:
        return w.detach().to(self.dtype)

    def __call__(self, x: Tensor, w: Tensor, add: Tensor | None = None, out: Tensor | None = None) -> Tensor:
        if self.dtype == torch.float32:
            return torch.mm(x, w.t(), out=out) if add is None else torch.addmm(add, x, w.t(), out=out)
        result = torch.mm(x.to(self.dtype), w.t()).float()
        result = result if add is None else result + add
        return result if out is None else out.copy_(result)

    def backward(self, grad: Tensor, w: Tensor) -> Tensor:
        """``grad @ w`` (the input gradient of ``x @ w.T``), for the float32 layers."""
        return torch.mm(grad, w)

    def packed(self, w: Tensor, rows: int, in_compute_dtype: bool = False) -> Callable[[Tensor], Tensor]:
        """``x -> x @ w.T`` (float32 result) for a weight used at every step with ``rows`` rows.

        On CPU the weight is reordered once into oneDNN's blocked layout, so the per-step
        16-row GEMMs skip MKL's re-packing of the weight at every call (timings in
        ``benchmarks/results``); elsewhere, a plain matmul. ``in_compute_dtype``: ``x`` and the
        result are both in the compute dtype (no conversions).
        """
        if w.device.type == "cpu" and _onednn_linear_works(self.dtype):
            w_packed = aten_mkldnn._reorder_linear_weight(w.to(self.dtype), rows)
            if self.dtype == torch.float32 or in_compute_dtype:
                return lambda x: aten_mkldnn._linear_pointwise(x, w_packed, None, "none", [], "")
            return lambda x: aten_mkldnn._linear_pointwise(x.to(self.dtype), w_packed, None, "none", [], "").float()
        if in_compute_dtype:
            w_t = w.to(self.dtype).t()
            return lambda x: torch.mm(x, w_t)
        return lambda x: self(x, w)

    def weight_grad(self, d_out: Tensor, inputs: Tensor) -> Tensor:
        """(..., O) output gradients, (..., I) inputs -> (O, I) weight gradient summed over all rows."""
        d_out, inputs = d_out.reshape(-1, d_out.shape[-1]), inputs.reshape(-1, inputs.shape[-1])
        if self.dtype == torch.float32:
            return d_out.t() @ inputs
        return (d_out.to(self.dtype).t() @ inputs.to(self.dtype)).float()


@functools.cache
def _onednn_linear_works(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch build has oneDNN's prepacked linear (a private op inductor uses) and it is right."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        # fixed values: a check that drew from torch's RNG would shift every later sample
        w, x = torch.linspace(-1.0, 1.0, 192).reshape(24, 8).cos(), torch.linspace(-2.0, 2.0, 32).reshape(4, 8)
        w, x = w.to(dtype), x.to(dtype)
        out = aten_mkldnn._linear_pointwise(x, aten_mkldnn._reorder_linear_weight(w, 4), None, "none", [], "")
        return bool(torch.allclose(out.float(), (x @ w.t()).float(), rtol=1e-2, atol=1e-2))
    except (AttributeError, RuntimeError):
        return False


class PosteriorScan(torch.autograd.Function):
    """``(embed_proj, action, keep, initial_deter, *weights) -> (deter, stoch, logits)``, all (T, B, ...).

    ``keep`` (T, B) bool is False where the state restarts from the learned
    initial state (``is_first``, and every row at t = 0); there the previous
    action is replaced by zeros. ``initial_stoch`` (SC,) is a constant (the
    initial prior's mode). The weights are passed as tensors so autograd
    returns their gradients; the modules only provide shapes and eps.
    """

    @staticmethod
    def forward(
        ctx: Any,
        rssm: Any,
        sample: bool,
        use_c: bool,
        restarts: tuple[bool, ...] | None,
        compute_dtype: torch.dtype,
        embed_proj: Tensor,
        action: Tensor,
        keep: Tensor,
        initial_deter: Tensor,
        initial_stoch: Tensor,
        *weights: Tensor,
    ) -> tuple[Tensor, ...]:
        library = native_library(embed_proj, compute_dtype) if use_c else None
        ctx.native = library is not None
        # autocast off: _Matmul applies the compute dtype, the rest stays float32
        with torch.autocast(embed_proj.device.type, enabled=False):
            if library is not None:
                return NativeScan.forward(
                    ctx, rssm, sample, compute_dtype, embed_proj, action, keep, initial_deter, initial_stoch, *weights
                )
            return PosteriorScan._forward(
                ctx,
                rssm,
                sample,
                restarts,
                compute_dtype,
                embed_proj,
                action,
                keep,
                initial_deter,
                initial_stoch,
                *weights,
            )

    @staticmethod
    def backward(ctx: Any, grad_deter: Tensor, grad_stoch: Tensor, grad_logits: Tensor) -> tuple[Tensor | None, ...]:
        with torch.autocast(grad_deter.device.type, enabled=False):
            if ctx.native:
                return NativeScan.backward(ctx, grad_deter, grad_stoch, grad_logits)
            return PosteriorScan._backward(ctx, grad_deter, grad_stoch, grad_logits)

    @staticmethod
    def _forward(
        ctx: Any,
        rssm: Any,
        sample: bool,
        restarts: tuple[bool, ...] | None,
        compute_dtype: torch.dtype,
        embed_proj: Tensor,
        action: Tensor,
        keep: Tensor,
        initial_deter: Tensor,
        initial_stoch: Tensor,
        *weights: Tensor,
    ) -> tuple[Tensor, ...]:
        T, B, U = embed_proj.shape
        D, S, C, unimix = rssm.deter_dim, rssm.stoch_dim, rssm.classes, rssm.unimix
        SC = S * C
        # The GRU's (B, U + D) x (U + D, 3D) matmuls run in the compute dtype; the small layers in
        # float32 (at 16 rows bfloat16 is slower on CPU, and they are a small part of the FLOPs).
        mm, gru_mm = _Matmul(torch.float32), _Matmul(compute_dtype)
        w = PosteriorWeights(*weights)
        w_in, g_in, b_in = w.img_in.detach(), w.img_in_norm, w.img_in_norm_bias
        w_gru, g_gru, b_gru = w.gru, w.gru_norm, w.gru_norm_bias
        w_post_deter, g_post, b_post = w.post_deter.detach(), w.post_norm, w.post_norm_bias
        w_post_out, b_post_out = w.post_out.detach(), w.post_out_bias
        w_gru = gru_mm.weight(w_gru)
        gru_linear = gru_mm.packed(w_gru, B)
        eps_in, eps_gru, eps_post = rssm.img_in[1].eps, rssm.gru.norm.eps, rssm.post_net[0].eps
        if restarts is None:  # not read on the host: blend the initial state in at every step
            restarts = (True,) * T
        actions = (action * keep.unsqueeze(-1)).unbind(0)  # the action is zero where the state restarts
        embeds = embed_proj.unbind(0)
        # Time-major buffers the layers write into (``out=``): the outputs, and the inputs of the
        # weight gradients, which the backward then takes as one (T * B, ...) matrix each.
        new = embed_proj.new_empty
        z_action, x_h, deter, post_y, logits, stoch = (
            new(T, B, width) for width in (SC + action.shape[-1], U + D, D, U, SC, SC)
        )
        # the rest per step in lists (no copies)
        saved: dict[str, list[Tensor]] = {k: [] for k in _SAVED}
        init_deter, init_stoch = initial_deter.expand(B, D), initial_stoch.expand(B, SC)
        # the update gate's -1 (biased towards keeping the state) folded into the norm's bias
        b_gru_update = folded_norm_bias(b_gru)
        uniform_mix = embed_proj.new_full((B, S, C), unimix / C)
        sampler = distributions.one_hot_sample if sample else distributions.one_hot_mode
        h, z = init_deter, init_stoch
        for t, (z_action_t, x_h_t, h_t, post_y_t, logits_t, z_t) in enumerate(
            zip(*(buffer.unbind(0) for buffer in (z_action, x_h, deter, post_y, logits, stoch)), strict=True)
        ):
            if t > 0 and restarts[t]:
                row_keep = keep[t].unsqueeze(-1)
                h, z = torch.where(row_keep, h, init_deter), torch.where(row_keep, z, init_stoch)
            # img_in: Linear -> LayerNorm -> SiLU
            torch.cat([z, actions[t]], dim=-1, out=z_action_t)
            in_pre = mm(z_action_t, w_in)
            in_normed, in_mean, in_rstd = _layer_norm(in_pre, g_in, b_in, eps_in)
            # GRU: one Linear for the three gates, LayerNorm, DreamerV3's gate functions
            torch.cat([F.silu(in_normed), h], dim=-1, out=x_h_t)
            gru_pre = gru_linear(x_h_t)
            gates, gru_mean, gru_rstd = _layer_norm(gru_pre, g_gru, b_gru_update, eps_gru)
            reset_in, candidate_in, update_in = gates.split(D, dim=-1)
            reset = torch.sigmoid(reset_in)
            candidate = torch.tanh(reset * candidate_in)
            update = torch.sigmoid(update_in)
            h = torch.lerp(h, candidate, update, out=h_t)
            # posterior: Linear(deter) + Linear(embed) (precomputed) -> LayerNorm -> SiLU -> Linear
            post_pre = mm(h, w_post_deter, add=embeds[t])
            post_normed, post_mean, post_rstd = _layer_norm(post_pre, g_post, b_post, eps_post)
            aten.silu.out(post_normed, out=post_y_t)
            mm(post_y_t, w_post_out, add=b_post_out, out=logits_t)
            softmax = torch.softmax(logits_t.view(B, S, C), dim=-1)
            probs = torch.add(uniform_mix, softmax, alpha=1.0 - unimix) if unimix > 0 else softmax
            z = z_t.copy_(sampler(probs).view(B, SC))
            for key, value in zip(
                _SAVED,
                (
                    in_pre,
                    in_normed,
                    in_mean,
                    in_rstd,
                    gru_pre,
                    gru_mean,
                    gru_rstd,
                    reset,
                    candidate_in,
                    candidate,
                    update,
                    post_pre,
                    post_normed,
                    post_mean,
                    post_rstd,
                    softmax,
                ),
                strict=True,
            ):
                saved[key].append(value)

        ctx.rssm, ctx.mm, ctx.gru_mm, ctx.restarts, ctx.sample, ctx.saved = rssm, mm, gru_mm, restarts, sample, saved
        ctx.weights = (w_in, w_gru, w_post_deter, w_post_out)
        ctx.save_for_backward(keep, z_action, x_h, deter, post_y, *weights)
        return deter, stoch.view(T, B, S, C), logits.view(T, B, S, C)

    @staticmethod
    def _backward(ctx: Any, grad_deter: Tensor, grad_stoch: Tensor, grad_logits: Tensor) -> tuple[Tensor | None, ...]:
        keep, z_action, x_h, deter, post_y, *weights = ctx.saved_tensors
        saved, rssm, mm, gru_mm, restarts = ctx.saved, ctx.rssm, ctx.mm, ctx.gru_mm, ctx.restarts
        w_in, w_gru, w_post_deter, w_post_out = ctx.weights
        w = PosteriorWeights(*weights)
        g_in, b_in, g_gru, b_gru = w.img_in_norm, w.img_in_norm_bias, w.gru_norm, w.gru_norm_bias
        g_post, b_post = w.post_norm, w.post_norm_bias
        T, B, D = deter.shape
        S, C = rssm.stoch_dim, rssm.classes
        SC, U = S * C, g_in.shape[0]
        grad_deters, grad_stochs, grad_logits_steps = (
            g.unbind(0) for g in (grad_deter, grad_stoch.reshape(T, B, SC), grad_logits.reshape(T, B, SC))
        )
        gru_linear_backward = gru_mm.packed(w_gru.t().contiguous(), B)
        scale = 1.0 - rssm.unimix if ctx.sample else 0.0  # the mode (sample=False) passes no gradient
        # time-major buffers for the gradients w.r.t. the pre-activations (and the norms' affine
        # parameters per step): the weight gradients are then one matmul / sum each after the loop
        new = deter.new_empty
        d_logits, d_post_pre, d_gru_pre, d_in_pre = new(T, B, SC), new(T, B, U), new(T, B, 3 * D), new(T, B, U)
        d_norm = {name: (new(T, width), new(T, width)) for name, width in (("post", U), ("gru", 3 * D), ("in", U))}

        def layer_norm_backward(
            name: str,
            t: int,
            d_normed: Tensor,
            pre: Tensor,
            mean: Tensor,
            rstd: Tensor,
            weight: Tensor,
            bias: Tensor,
            out: Tensor,
        ) -> Tensor:
            d_weight, d_bias = d_norm[name]
            aten.native_layer_norm_backward.out(
                d_normed,
                pre,
                [pre.shape[-1]],
                mean,
                rstd,
                weight,
                bias,
                [True, True, True],
                out0=out,
                out1=d_weight[t],
                out2=d_bias[t],
            )
            return out

        d_initial_deter = torch.zeros_like(g_gru[:D])
        d_h_next, d_z_next = torch.zeros_like(grad_deters[0]), torch.zeros_like(grad_stochs[0])
        for t in reversed(range(T)):
            d_h = grad_deters[t] + d_h_next
            # straight-through sample -> unimix softmax -> logits
            d_probs = ((grad_stochs[t] + d_z_next) * scale).view(B, S, C)
            d_soft = aten._softmax_backward_data(d_probs, saved["softmax"][t], -1, torch.float32)
            d_logits_t = torch.add(grad_logits_steps[t], d_soft.view(B, SC), out=d_logits[t])
            # posterior layers back to deter_t
            d_normed = aten.silu_backward(mm.backward(d_logits_t, w_post_out), saved["post_normed"][t])
            d_pre = layer_norm_backward(
                "post",
                t,
                d_normed,
                saved["post_pre"][t],
                saved["post_mean"][t],
                saved["post_rstd"][t],
                g_post,
                b_post,
                d_post_pre[t],
            )
            d_h = d_h + mm.backward(d_pre, w_post_deter)
            # GRU cell: deter_t = h_prev + u * (c - h_prev)
            update, candidate, reset = saved["update"][t], saved["candidate"][t], saved["reset"][t]
            d_candidate = d_h * update
            d_h_prev = d_h - d_candidate
            d_tanh = aten.tanh_backward(d_candidate, candidate)
            d_gates = torch.cat(
                [
                    aten.sigmoid_backward(d_tanh * saved["candidate_in"][t], reset),
                    d_tanh * reset,
                    aten.sigmoid_backward(d_h * (candidate - x_h[t, :, U:]), update),
                ],
                dim=-1,
            )
            d_pre = layer_norm_backward(
                "gru",
                t,
                d_gates,
                saved["gru_pre"][t],
                saved["gru_mean"][t],
                saved["gru_rstd"][t],
                g_gru,
                b_gru,
                d_gru_pre[t],
            )
            d_x_h = gru_linear_backward(d_pre)  # (B, U + D)
            d_h_prev = d_h_prev + d_x_h[:, U:]
            # img_in back to stoch_{t-1}
            d_normed = aten.silu_backward(d_x_h[:, :U], saved["in_normed"][t])
            d_pre = layer_norm_backward(
                "in", t, d_normed, saved["in_pre"][t], saved["in_mean"][t], saved["in_rstd"][t], g_in, b_in, d_in_pre[t]
            )
            d_z_prev = mm.backward(d_pre, w_in[:, :SC])
            # restarts: those rows' previous state is the initial state
            if t == 0:
                d_initial_deter += d_h_prev.sum(0)
            elif restarts[t]:
                row_keep = keep[t].unsqueeze(-1)
                d_initial_deter += torch.where(row_keep, 0.0, d_h_prev).sum(0)
                d_h_next = torch.where(row_keep, d_h_prev, 0.0)
                d_z_next = torch.where(row_keep, d_z_prev, 0.0)
            else:
                d_h_next, d_z_next = d_h_prev, d_z_prev

        norm_grads = {name: (d_weight.sum(0), d_bias.sum(0)) for name, (d_weight, d_bias) in d_norm.items()}
        return _input_and_weight_grads(
            ctx, z_action, x_h, deter, post_y, d_in_pre, d_gru_pre, d_post_pre, d_logits, d_initial_deter, norm_grads
        )


def _input_and_weight_grads(
    ctx: Any,
    z_action: Tensor,
    x_h: Tensor,
    deter: Tensor,
    post_y: Tensor,
    d_in_pre: Tensor,
    d_gru_pre: Tensor,
    d_post_pre: Tensor,
    d_logits: Tensor,
    d_initial_deter: Tensor,
    norm_grads: dict[str, tuple[Tensor, Tensor]],
) -> tuple[Tensor | None, ...]:
    """:meth:`PosteriorScan.backward`'s return: every weight gradient at once, over the T x B rows."""
    mm, gru_mm = ctx.mm, ctx.gru_mm
    needs = PosteriorWeights(*ctx.needs_input_grad[len(_INPUTS_BEFORE_WEIGHTS) :])
    weight_grads = PosteriorWeights(
        img_in=mm.weight_grad(d_in_pre, z_action) if needs.img_in else None,
        img_in_norm=norm_grads["in"][0],
        img_in_norm_bias=norm_grads["in"][1],
        gru=gru_mm.weight_grad(d_gru_pre, x_h) if needs.gru else None,
        gru_norm=norm_grads["gru"][0],
        gru_norm_bias=norm_grads["gru"][1],
        post_deter=mm.weight_grad(d_post_pre, deter) if needs.post_deter else None,
        post_norm=norm_grads["post"][0],
        post_norm_bias=norm_grads["post"][1],
        post_out=mm.weight_grad(d_logits, post_y) if needs.post_out else None,
        post_out_bias=d_logits.sum((0, 1)),
    )
    # gradients of (rssm, sample, use_c, restarts, compute_dtype, embed_proj, action, keep, initial_deter,
    # initial_stoch)
    return (None, None, None, None, None, d_post_pre, None, None, d_initial_deter, None, *weight_grads)


#: PosteriorScan.apply's arguments before the weights
_INPUTS_BEFORE_WEIGHTS = (
    "rssm",
    "sample",
    "use_c",
    "restarts",
    "compute_dtype",
    "embed_proj",
    "action",
    "keep",
    "initial_deter",
    "initial_stoch",
)

#: what the forward keeps per step in lists for the backward
_SAVED = (
    "in_pre",
    "in_normed",
    "in_mean",
    "in_rstd",
    "gru_pre",
    "gru_mean",
    "gru_rstd",
    "reset",
    "candidate_in",
    "candidate",
    "update",
    "post_pre",
    "post_normed",
    "post_mean",
    "post_rstd",
    "softmax",
)


class PosteriorWeights(NamedTuple):
    """The RSSM parameters the posterior unroll reads, by name (passed to the autograd Function one by
    one, so that it returns their gradients). The same fields also name their gradients (or None) and
    whether each needs one (``ctx.needs_input_grad``), hence ``Any``: shapes below are the weights'."""

    img_in: Any  # (U, SC + A)
    img_in_norm: Any  # (U,)
    img_in_norm_bias: Any  # (U,)
    gru: Any  # (3D, U + D)
    gru_norm: Any  # (3D,)
    gru_norm_bias: Any  # (3D,), without the update gate's offset
    post_deter: Any  # (U, D)
    post_norm: Any  # (U,)
    post_norm_bias: Any  # (U,)
    post_out: Any  # (SC, U)
    post_out_bias: Any  # (SC,)

    @classmethod
    def of(cls, rssm: Any) -> PosteriorWeights:
        img_linear, img_norm = rssm.img_in[0], rssm.img_in[1]
        post_norm, post_out = rssm.post_net[0], rssm.post_net[2]
        return cls(
            img_linear.weight,
            img_norm.weight,
            img_norm.bias,
            rssm.gru.linear.weight,
            rssm.gru.norm.weight,
            rssm.gru.norm.bias,
            rssm.post_deter.weight,
            post_norm.weight,
            post_norm.bias,
            post_out.weight,
            post_out.bias,
        )


def observe(
    rssm: Any,
    embed: Tensor,
    action: Tensor,
    is_first: Tensor,
    sample: bool = True,
    use_c: bool = True,
    sync_free: bool = False,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """:meth:`RSSM.observe <sb3_mamba.rssm.RSSM.observe>` from the initial state, through :class:`PosteriorScan`.

    :param use_c: run the steps on the C kernels where they apply (else ATen ops).
    :param sync_free: read no tensor values on the host, so that a GPU's host never waits for it; then
        the initial state is blended in at every step, not only at the steps where some row restarts
        (the same result). :func:`~sb3_mamba.kernels.select_backend` sets it on every device but the CPU.
    """
    device = embed.device.type
    compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
    initial = rssm.initial(1)
    # (T, B): False where the state restarts, and at t = 0 (the unroll starts from the initial state)
    keep = ~is_first.T.bool()
    keep[0] = False
    # the steps where some row restarts (one read on the host)
    restarts = None if sync_free else tuple((~keep).any(1).tolist())
    # (T, B, hidden): the observation half of the posterior's input layer, all steps at once
    embed_proj = rssm.post_embed(embed).float().transpose(0, 1)
    deter, stoch, logits = PosteriorScan.apply(
        rssm,
        sample,
        use_c,
        restarts,
        compute_dtype,
        embed_proj,
        action.transpose(0, 1),
        keep,
        initial["deter"][0],
        initial["stoch"][0].flatten().detach(),
        *PosteriorWeights.of(rssm),
    )
    # (B, T, ...)
    post = {"deter": deter.transpose(0, 1), "stoch": stoch.transpose(0, 1), "logits": logits.transpose(0, 1)}
    return post, rssm.prior_of(post)


# -- the C++ kernels' path ---------------------------------------------------------------------------
def native_library(like: Tensor, compute_dtype: torch.dtype) -> Any | None:
    """The compiled kernels where they apply (CPU, float32 (T, B, ...) data with T, B > 0, float32/bfloat16
    matmuls), else None."""
    if (
        like.device.type != "cpu"
        or like.dtype != torch.float32
        or like.shape[0] == 0
        or like.shape[1] == 0
        or compute_dtype not in (torch.float32, torch.bfloat16)
    ):
        return None
    return native.posterior_scan_library()


class NativeScan:
    """:class:`PosteriorScan` on the C++ kernels: per step, one kernel call and the GRU's matmul (torch).

    ``torch.classes.sb3_mamba.PosteriorScan`` holds every buffer the kernels read or write (each checked
    for its dtype and shape). Same inputs, outputs and gradients as the ATen path; the samples use the
    same uniforms (one ``torch.rand`` of (T, B, S) draws the stream that T per-step draws of (B, S, 1)
    would).
    """

    @staticmethod
    def forward(
        ctx: Any,
        rssm: Any,
        sample: bool,
        compute_dtype: torch.dtype,
        embed_proj: Tensor,
        action: Tensor,
        keep: Tensor,
        initial_deter: Tensor,
        initial_stoch: Tensor,
        *weights: Tensor,
    ) -> tuple[Tensor, ...]:
        T, B, U = embed_proj.shape
        D, S, C, A = rssm.deter_dim, rssm.stoch_dim, rssm.classes, action.shape[-1]
        SC = S * C
        w = PosteriorWeights(*(weight.detach().float().contiguous() for weight in weights))
        mm, gru_mm = _Matmul(torch.float32), _Matmul(compute_dtype)
        w_gru = gru_mm.weight(w.gru)
        gru_linear = gru_mm.packed(w_gru, B, in_compute_dtype=True)
        new = functools.partial(torch.empty, dtype=torch.float32)
        tensors = dict(
            w_in=w.img_in,
            w_in_t=w.img_in.t().contiguous(),
            g_in=w.img_in_norm,
            b_in=w.img_in_norm_bias,
            g_gru=w.gru_norm,
            b_gru=folded_norm_bias(w.gru_norm_bias),  # the update gate's offset folded in
            w_pd=w.post_deter,
            w_pd_t=w.post_deter.t().contiguous(),
            g_post=w.post_norm,
            b_post=w.post_norm_bias,
            w_out=w.post_out,
            w_out_t=w.post_out.t().contiguous(),
            b_out=w.post_out_bias,
            init_deter=initial_deter.detach().float().contiguous(),
            init_index=initial_stoch.view(S, C).argmax(-1).int(),
            embed_proj=embed_proj.detach().contiguous(),
            action=action.detach().float().contiguous(),
            keep=keep.to(torch.uint8).contiguous(),
            z_action=new(T, B, SC + A),
            x_h=torch.empty(T, B, U + D, dtype=compute_dtype),
            in_pre=new(T, B, U),
            in_mean=new(T, B),
            in_rstd=new(T, B),
            gru_mean=new(T, B),
            gru_rstd=new(T, B),
            deter=new(T, B, D),
            post_pre=new(T, B, U),
            post_mean=new(T, B),
            post_rstd=new(T, B),
            post_y=new(T, B, U),
            logits=new(T, B, SC),
            softmax=new(T, B, SC),
            stoch=new(T, B, SC),
            index=torch.empty(T, B, S, dtype=torch.int32),
        )
        if sample:
            tensors["uniform"] = torch.rand(T, B, S)
        sizes = dict(T=T, B=B, D=D, U=U, S=S, C=C, A=A, bf16=int(compute_dtype == torch.bfloat16))
        scalars = dict(
            unimix=float(rssm.unimix),
            grad_scale=1.0 - rssm.unimix if sample else 0.0,
            eps_in=float(rssm.img_in[1].eps),
            eps_gru=float(rssm.gru.norm.eps),
            eps_post=float(rssm.post_net[0].eps),
        )
        scan = torch.classes.sb3_mamba.PosteriorScan(sizes, scalars, tensors)
        x_h = tensors["x_h"]
        scan.forward_input(0)
        gru_pre = []  # (B, 3D) per step in the compute dtype; the backward recomputes the gates from it
        for t in range(T):
            gru_pre.append(gru_linear(x_h[t]))
            scan.forward_output(t, gru_pre[t])
        # the outputs go through save_for_backward (an output held by the scan would be a reference cycle);
        # the backward reads deter, never stoch or logits
        deter, stoch, logits = tensors["deter"], tensors["stoch"], tensors["logits"]
        scan.release(["deter", "stoch", "logits"])
        ctx.save_for_backward(deter)
        ctx.scan, ctx.sizes, ctx.gru_pre = scan, sizes, gru_pre
        ctx.saved_inputs = {key: tensors[key] for key in ("z_action", "x_h", "post_y")}
        ctx.mm, ctx.gru_mm = mm, gru_mm
        ctx.gru_linear_backward = gru_mm.packed(w_gru.t().contiguous(), B, in_compute_dtype=True)
        return deter, stoch.view(T, B, S, C), logits.view(T, B, S, C)

    @staticmethod
    def backward(ctx: Any, grad_deter: Tensor, grad_stoch: Tensor, grad_logits: Tensor) -> tuple[Tensor | None, ...]:
        scan, sizes = ctx.scan, ctx.sizes
        (deter,) = ctx.saved_tensors
        T, B, D, U, SC = sizes["T"], sizes["B"], sizes["D"], sizes["U"], sizes["S"] * sizes["C"]
        new = functools.partial(torch.zeros, dtype=torch.float32)
        grads = dict(
            grad_deter=grad_deter.float().contiguous(),
            grad_stoch=grad_stoch.float().reshape(T, B, SC).contiguous(),
            grad_logits=grad_logits.float().reshape(T, B, SC).contiguous(),
            d_logits=new(T, B, SC),
            d_post_pre=new(T, B, U),
            d_in_pre=new(T, B, U),
            d_gru_pre=torch.empty(T, B, 3 * D, dtype=ctx.gru_mm.dtype),
            d_g_in=new(U),
            d_b_in=new(U),
            d_g_gru=new(3 * D),
            d_b_gru=new(3 * D),
            d_g_post=new(U),
            d_b_post=new(U),
            d_init_deter=new(D),
            carry_h=new(B, D),
            carry_z=new(B, SC),
            d_h_prev=new(B, D),
        )
        scan.attach({"deter": deter, **grads})
        d_gru_pre, gru_pre = grads["d_gru_pre"], ctx.gru_pre
        scan.backward_output(T - 1, gru_pre[T - 1])
        for t in reversed(range(T)):
            d_x_h = ctx.gru_linear_backward(d_gru_pre[t])  # (B, U + D) in the compute dtype
            scan.backward_input(t, d_x_h, gru_pre[t - 1] if t > 0 else None)
        scan.release(["deter"])
        norm_grads = {
            "in": (grads["d_g_in"], grads["d_b_in"]),
            "gru": (grads["d_g_gru"], grads["d_b_gru"]),
            "post": (grads["d_g_post"], grads["d_b_post"]),
        }
        saved = ctx.saved_inputs
        return _input_and_weight_grads(
            ctx,
            saved["z_action"],
            saved["x_h"],
            deter,
            saved["post_y"],
            grads["d_in_pre"],
            d_gru_pre,
            grads["d_post_pre"],
            grads["d_logits"],
            grads["d_init_deter"],
            norm_grads,
        )

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
  with :func:`sb3_mamba.distributions.sample_one_hot` (straight-through);
* backward: per step only the gradients that carry the recursion (to the
  previous deterministic and stochastic state), with fused ATen backward
  kernels (``native_layer_norm_backward``, ``silu_backward``, ...);
* every weight gradient after the loop, as one matmul over all ``T x B`` rows.

``tests/test_rssm_scan.py`` checks values and gradients against the autograd
step loop (:meth:`RSSM.observe_steps`). Shapes: ``T`` time, ``B`` batch, ``D``
deter, ``S x C`` latents (``SC = S * C``), ``A`` action, ``E`` hidden width.
Under autocast the matmuls run in the autocast dtype, everything else in float32.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

import sb3_mamba.distributions as distributions

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

    def __call__(self, x: Tensor, w: Tensor, add: Tensor | None = None) -> Tensor:
        if self.dtype == torch.float32:
            return torch.mm(x, w.t()) if add is None else torch.addmm(add, x, w.t())
        out = torch.mm(x.to(self.dtype), w.t()).float()
        return out if add is None else out + add

    def backward(self, grad: Tensor, w: Tensor) -> Tensor:
        """``grad @ w`` (the input gradient of ``x @ w.T``)."""
        if self.dtype == torch.float32:
            return torch.mm(grad, w)
        return torch.mm(grad.to(self.dtype), w).float()

    def packed(self, w: Tensor, rows: int) -> Callable[[Tensor], Tensor]:
        """``x -> x @ w.T`` for a weight used at every step with ``rows`` rows.

        On CPU in float32 the weight is reordered once into oneDNN's blocked layout:
        a 16-row GEMM with the GRU's 1536 x 576 weight then takes 160 instead of
        290 us (MKL re-packs the weight at every call). Elsewhere, a plain matmul.
        """
        if w.device.type == "cpu" and self.dtype == torch.float32 and _onednn_linear_works():
            w_packed = aten_mkldnn._reorder_linear_weight(w, rows)
            return lambda x: aten_mkldnn._linear_pointwise(x, w_packed, None, "none", [], "")
        return lambda x: self(x, w)


@functools.cache
def _onednn_linear_works() -> bool:
    """Whether this torch build has oneDNN's prepacked linear (a private op inductor uses) and it is right."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        # fixed values: a check that drew from torch's RNG would shift every later sample
        w, x = torch.linspace(-1.0, 1.0, 192).reshape(24, 8).cos(), torch.linspace(-2.0, 2.0, 32).reshape(4, 8)
        out = aten_mkldnn._linear_pointwise(x, aten_mkldnn._reorder_linear_weight(w, 4), None, "none", [], "")
        return bool(torch.allclose(out, x @ w.t(), rtol=1e-4, atol=1e-5))
    except (AttributeError, RuntimeError):
        return False


def _unrolled(rows: Tensor) -> Tensor:
    """(T, B, ...) -> (T * B, ...) for the weight gradients over all steps."""
    return rows.reshape(-1, rows.shape[-1])


class PosteriorScan(torch.autograd.Function):
    """``(embed_proj, action, keep, initial_deter, *weights) -> (deter, stoch, logits)``, all (T, B, ...).

    ``keep`` (T, B) bool is False where the state restarts from the learned
    initial state (``is_first``, and every row at t = 0); there the previous
    action is replaced by zeros. ``initial_stoch`` (SC,) is a constant (the
    initial prior's mode). The weights are passed as tensors so autograd
    returns their gradients; the modules only provide shapes and eps.
    """

    @staticmethod
    def forward(ctx: Any, rssm: Any, sample: bool, compute_dtype: torch.dtype, embed_proj: Tensor, action: Tensor,
                keep: Tensor, initial_deter: Tensor, initial_stoch: Tensor, *weights: Tensor) -> tuple[Tensor, ...]:
        # autocast off: _Matmul applies the compute dtype, the rest stays float32
        with torch.autocast(embed_proj.device.type, enabled=False):
            return PosteriorScan._forward(ctx, rssm, sample, compute_dtype, embed_proj, action, keep, initial_deter,
                                          initial_stoch, *weights)

    @staticmethod
    def backward(ctx: Any, grad_deter: Tensor, grad_stoch: Tensor, grad_logits: Tensor) -> tuple[Tensor | None, ...]:
        with torch.autocast(grad_deter.device.type, enabled=False):
            return PosteriorScan._backward(ctx, grad_deter, grad_stoch, grad_logits)

    @staticmethod
    def _forward(ctx: Any, rssm: Any, sample: bool, compute_dtype: torch.dtype, embed_proj: Tensor, action: Tensor,
                 keep: Tensor, initial_deter: Tensor, initial_stoch: Tensor, *weights: Tensor) -> tuple[Tensor, ...]:
        T, B, _ = embed_proj.shape
        D, S, C, unimix = rssm.deter_dim, rssm.stoch_dim, rssm.classes, rssm.unimix
        mm = _Matmul(compute_dtype)
        w_in, g_in, b_in, w_gru, g_gru, b_gru, w_post_deter, g_post, b_post, w_post_out, b_post_out = weights
        w_in, w_gru, w_post_deter, w_post_out = (mm.weight(w) for w in (w_in, w_gru, w_post_deter, w_post_out))
        eps_in, eps_gru, eps_post = rssm.img_in[1].eps, rssm.gru.norm.eps, rssm.post_net[0].eps
        restarts = (~keep).any(1).tolist()  # one host sync: which steps restart some rows
        actions = (action * keep.unsqueeze(-1)).unbind(0)  # the action is zero where the state restarts
        embeds = embed_proj.unbind(0)
        gru_linear = mm.packed(w_gru, B)
        init_deter, init_stoch = initial_deter.expand(B, D), initial_stoch.expand(B, S * C)
        # per step: the tensors the backward reads (lists: no copies inside the loop)
        saved: dict[str, list[Tensor]] = {k: [] for k in _SAVED}
        h, z = init_deter, init_stoch
        for t in range(T):
            if t > 0 and restarts[t]:
                row_keep = keep[t].unsqueeze(-1)
                h, z = torch.where(row_keep, h, init_deter), torch.where(row_keep, z, init_stoch)
            # img_in: Linear -> LayerNorm -> SiLU
            z_action = torch.cat([z, actions[t]], dim=-1)
            in_pre = mm(z_action, w_in)
            in_normed, in_mean, in_rstd = _layer_norm(in_pre, g_in, b_in, eps_in)
            # GRU: one Linear for the three gates, LayerNorm, DreamerV3's gate functions
            x_h = torch.cat([F.silu(in_normed), h], dim=-1)
            gru_pre = gru_linear(x_h)
            gates, gru_mean, gru_rstd = _layer_norm(gru_pre, g_gru, b_gru, eps_gru)
            reset_in, candidate_in, update_in = gates.split(D, dim=-1)
            reset = torch.sigmoid(reset_in)
            candidate = torch.tanh(reset * candidate_in)
            update = torch.sigmoid(update_in - 1.0)
            h_prev, h = h, torch.lerp(h, candidate, update)
            # posterior: Linear(deter) + Linear(embed) (precomputed) -> LayerNorm -> SiLU -> Linear
            post_pre = mm(h, w_post_deter, add=embeds[t])
            post_normed, post_mean, post_rstd = _layer_norm(post_pre, g_post, b_post, eps_post)
            post_y = F.silu(post_normed)
            logits = mm(post_y, w_post_out, add=b_post_out)
            softmax = torch.softmax(logits.view(B, S, C), dim=-1)
            probs = softmax * (1.0 - unimix) + unimix / C if unimix > 0 else softmax
            if sample:
                z = distributions.sample_one_hot(probs).view(B, S * C)
            else:
                z = distributions.one_hot_mode(probs).view(B, S * C)
            for key, value in zip(_SAVED, (z_action, in_pre, in_normed, in_mean, in_rstd, x_h, gru_pre, gru_mean,
                                           gru_rstd, reset, candidate_in, candidate, update, h_prev, h, post_pre,
                                           post_normed, post_mean, post_rstd, post_y, softmax, z, logits)):
                saved[key].append(value)

        ctx.rssm, ctx.mm, ctx.restarts, ctx.sample = rssm, mm, restarts, sample
        ctx.weights = (w_in, w_gru, w_post_deter, w_post_out)
        ctx.saved = saved
        ctx.save_for_backward(keep, *weights)
        stack = lambda key: torch.stack(saved[key])  # noqa: E731
        return stack("deter"), stack("stoch").view(T, B, S, C), stack("logits").view(T, B, S, C)

    @staticmethod
    def _backward(ctx: Any, grad_deter: Tensor, grad_stoch: Tensor, grad_logits: Tensor) -> tuple[Tensor | None, ...]:
        keep, *weights = ctx.saved_tensors
        saved, rssm, mm, restarts = ctx.saved, ctx.rssm, ctx.mm, ctx.restarts
        w_in, w_gru, w_post_deter, w_post_out = ctx.weights
        _, g_in, b_in, _, g_gru, b_gru, _, g_post, b_post, _, _ = weights
        T, B, D = grad_deter.shape
        S, C = rssm.stoch_dim, rssm.classes
        SC, E = S * C, g_in.shape[0]
        grad_deter, grad_stoch, grad_logits = (g.unbind(0) for g in
                                               (grad_deter, grad_stoch.reshape(T, B, SC), grad_logits.reshape(T, B, SC)))
        mask = [True, False, False]  # LayerNorm weight/bias gradients come batched after the loop
        gru_linear_backward = mm.packed(w_gru.t().contiguous(), B)
        scale = 1.0 - rssm.unimix if ctx.sample else 0.0  # the mode (sample=False) passes no gradient

        # per step, the gradients w.r.t. pre-activations the batched weight gradients need
        grads: dict[str, list[Tensor]] = {k: [None] * T for k in ("logits", "post_pre", "post_normed", "gru_pre",
                                                                 "gates", "in_pre", "in_normed")}
        d_initial_deter = torch.zeros_like(g_gru[:D])
        d_h_next, d_z_next = torch.zeros_like(grad_deter[0]), torch.zeros_like(grad_stoch[0])
        for t in reversed(range(T)):
            d_h = grad_deter[t] + d_h_next
            # straight-through sample -> unimix softmax -> logits
            d_probs = ((grad_stoch[t] + d_z_next) * scale).view(B, S, C)
            soft = saved["softmax"][t]
            d_soft = soft * (d_probs - (d_probs * soft).sum(-1, keepdim=True))
            d_logits = grads["logits"][t] = grad_logits[t] + d_soft.view(B, SC)
            # posterior layers back to deter_t
            d_normed = grads["post_normed"][t] = aten.silu_backward(mm.backward(d_logits, w_post_out),
                                                                    saved["post_normed"][t])
            d_pre = grads["post_pre"][t] = aten.native_layer_norm_backward(
                d_normed, saved["post_pre"][t], [E], saved["post_mean"][t], saved["post_rstd"][t], g_post, b_post,
                mask)[0]
            d_h = d_h + mm.backward(d_pre, w_post_deter)
            # GRU cell: deter_t = h_prev + u * (c - h_prev)
            update, candidate, reset = saved["update"][t], saved["candidate"][t], saved["reset"][t]
            d_candidate = d_h * update
            d_h_prev = d_h - d_candidate
            d_tanh = aten.tanh_backward(d_candidate, candidate)
            d_gates = grads["gates"][t] = torch.cat([
                aten.sigmoid_backward(d_tanh * saved["candidate_in"][t], reset),
                d_tanh * reset,
                aten.sigmoid_backward(d_h * (candidate - saved["h_prev"][t]), update),
            ], dim=-1)
            d_pre = grads["gru_pre"][t] = aten.native_layer_norm_backward(
                d_gates, saved["gru_pre"][t], [3 * D], saved["gru_mean"][t], saved["gru_rstd"][t], g_gru, b_gru,
                mask)[0]
            d_x_h = gru_linear_backward(d_pre)  # (B, E + D)
            d_h_prev = d_h_prev + d_x_h[:, E:]
            # img_in back to stoch_{t-1}
            d_normed = grads["in_normed"][t] = aten.silu_backward(d_x_h[:, :E], saved["in_normed"][t])
            d_pre = grads["in_pre"][t] = aten.native_layer_norm_backward(
                d_normed, saved["in_pre"][t], [E], saved["in_mean"][t], saved["in_rstd"][t], g_in, b_in, mask)[0]
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

        # every weight gradient at once, over the T x B rows
        rows = lambda items: torch.cat(items)  # noqa: E731  (T * B, ...)

        def weight_grad(d_out: str, inputs: str) -> Tensor:
            return rows(grads[d_out]).t() @ rows(saved[inputs])

        def norm_grads(d_normed: str, prefix: str) -> tuple[Tensor, Tensor]:
            d_normed_rows = rows(grads[d_normed])
            x_hat = (rows(saved[f"{prefix}_pre"]) - rows(saved[f"{prefix}_mean"])) * rows(saved[f"{prefix}_rstd"])
            return (d_normed_rows * x_hat).sum(0), d_normed_rows.sum(0)

        needs = ctx.needs_input_grad[8:]
        weight_grads = [
            weight_grad("in_pre", "z_action") if needs[0] else None,  # img_in Linear
            *norm_grads("in_normed", "in"),  # img_in LayerNorm
            weight_grad("gru_pre", "x_h") if needs[3] else None,  # GRU Linear
            *norm_grads("gates", "gru"),  # GRU LayerNorm
            weight_grad("post_pre", "deter") if needs[6] else None,  # post_deter
            *norm_grads("post_normed", "post"),  # posterior LayerNorm
            weight_grad("logits", "post_y") if needs[9] else None,  # posterior output Linear
            rows(grads["logits"]).sum(0),
        ]
        d_embed_proj = torch.stack(grads["post_pre"])
        return (None, None, None, d_embed_proj, None, None, d_initial_deter, None, *weight_grads)


#: what the forward keeps per step for the backward (``deter`` is the new state h_t)
_SAVED = ("z_action", "in_pre", "in_normed", "in_mean", "in_rstd", "x_h", "gru_pre", "gru_mean", "gru_rstd", "reset",
          "candidate_in", "candidate", "update", "h_prev", "deter", "post_pre", "post_normed", "post_mean",
          "post_rstd", "post_y", "softmax", "stoch", "logits")


def scan_weights(rssm: Any) -> tuple[Tensor, ...]:
    """The parameters :class:`PosteriorScan` reads, in its order."""
    img_linear, img_norm = rssm.img_in[0], rssm.img_in[1]
    post_norm, post_out = rssm.post_net[0], rssm.post_net[2]
    return (img_linear.weight, img_norm.weight, img_norm.bias, rssm.gru.linear.weight, rssm.gru.norm.weight,
            rssm.gru.norm.bias, rssm.post_deter.weight, post_norm.weight, post_norm.bias, post_out.weight,
            post_out.bias)

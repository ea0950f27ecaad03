"""Small building blocks shared by the world model and the actor-critic (DreamerV3 style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sb3_mamba import native
from sb3_mamba.distributions import full_precision


#: std of a standard normal truncated to [-2, 2]: dividing by it gives the truncated draw unit variance
TRUNCATED_NORMAL_STD = 0.87962566103423978


def _fans(weight: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear (out, in) or conv weight, as the reference counts them (a transposed
    conv's (in, out, k, k) weight is read like a conv's, so its fans are swapped, as there)."""
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


@torch.no_grad()
def fan_avg_normal_(weight: Tensor, fan_in: int | None = None, fan_out: int | None = None,
                    relative_bounds: bool = True) -> Tensor:
    """The reference's ``weight_init`` (DreamerV3): a normal of variance 1 / fan_avg truncated at 2 std.

    ``fan_in`` / ``fan_out`` override the weight's own (a layer stored as two blocks is drawn as one).
    The reference truncates conv weights at +-2 absolute (``relative_bounds=False``), i.e. not at all.
    """
    own_in, own_out = _fans(weight)
    std = ((fan_in or own_in) + (fan_out or own_out)) ** -0.5 * 2**0.5 / TRUNCATED_NORMAL_STD
    bound = 2.0 * std if relative_bounds else 2.0
    return nn.init.trunc_normal_(weight, 0.0, std, -bound, bound)


@torch.no_grad()
def fan_avg_uniform_(weight: Tensor, scale: float = 1.0) -> Tensor:
    """The reference's ``uniform_weight_init(scale)`` of output layers: U(+-sqrt(3 scale / fan_avg))."""
    fan_in, fan_out = _fans(weight)
    limit = (3.0 * scale / ((fan_in + fan_out) / 2.0)) ** 0.5
    return nn.init.uniform_(weight, -limit, limit)


@torch.no_grad()
def dreamer_init_(module: nn.Module) -> nn.Module:
    """Initialise every Linear and conv of ``module`` as the reference does: weights by
    :func:`fan_avg_normal_`, biases 0 (norms keep 1 / 0). Output layers are re-drawn by their owners."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            fan_avg_normal_(layer.weight, relative_bounds=isinstance(layer, nn.Linear))
            if layer.bias is not None:
                layer.bias.zero_()
    return module


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (under bfloat16 autocast only the matmuls run in bfloat16)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(full_precision(x))


class GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 (see :class:`LayerNorm`)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(full_precision(x))


class PaddedLinear(nn.Linear):
    """``nn.Linear`` whose matmul runs on ``out_features`` rounded up to a multiple of 8 (same parameters).

    Two-hot heads have 255 outputs; on 8192 rows the CPU GEMM takes 6.1 ms for 255 columns
    and 3.4 ms for 256 (float32, padding included), and its backward gains too.
    """

    def forward(self, x: Tensor) -> Tensor:
        pad = -self.out_features % 8
        weight, bias = F.pad(self.weight, (0, 0, 0, pad)), F.pad(self.bias, (0, pad))
        return F.linear(x, weight, bias)[..., : self.out_features]


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int | None = None, zero_out: bool = False,
        out_scale: float = 1.0) -> nn.Sequential:
    """``layers`` x (Linear, LayerNorm, SiLU), then an optional Linear head to ``out_dim``.

    Initialised as the reference's ``MLP``: hidden layers by :func:`dreamer_init_`, the head
    uniform with ``out_scale`` (:func:`fan_avg_uniform_`, 1.0) and a zero bias. ``zero_out``
    (``out_scale`` 0) starts the head at zero (DreamerV3's reward and critic heads start
    predicting 0, which avoids large early value targets).
    """
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers):
        blocks += [nn.Linear(dim, hidden, bias=False), LayerNorm(hidden, eps=1e-3), nn.SiLU()]
        dim = hidden
    if out_dim is not None:
        # only wide heads gain from padding (it costs time on 1..17 outputs)
        head = (PaddedLinear if out_dim >= 64 and out_dim % 8 else nn.Linear)(dim, out_dim)
        blocks.append(head)
    net = dreamer_init_(nn.Sequential(*blocks))
    if out_dim is not None:
        fan_avg_uniform_(net[-1].weight, 0.0 if zero_out else out_scale)
    return net


@dataclass
class FactoredInput:
    """A layer input ``[one_hot, dense[rows]]`` of N rows, kept apart (imagined RSSM features).

    ``hot`` (N, G) holds the column of each of G one-hot groups in the flat ``width``-column
    one-hot vector; ``dense`` (P, D) holds P distinct rows that ``rows`` (N,) indexes (None:
    P = N). :meth:`linear` equals ``F.linear(self.materialize(), weight)``, but the one-hot part
    is a sum of G weight columns (a gather: 5 ms instead of a 21 ms matmul for 8192 x 256
    one-hots and 640 outputs) and the dense part a matmul over the P distinct rows only.
    """

    hot: Tensor  # (N, G) int64
    dense: Tensor  # (P, D)
    width: int  # one-hot columns (G * classes)
    rows: Tensor | None = None  # (N,) into dense

    def __len__(self) -> int:
        return self.hot.shape[0]

    def linear(self, weight: Tensor) -> Tensor:
        """(out, width + D) weight -> (N, out), no bias."""
        dense_part = F.linear(self.dense, weight[:, self.width:])  # (P, out)
        if self.rows is not None:
            dense_part = dense_part[self.rows]
        hot_weight = weight[:, : self.width]
        if torch.is_grad_enabled() and hot_weight.requires_grad:
            # embedding_bag's weight gradient (a sorted scatter) is slower than the matmul's: 6.3 vs ~2 ms
            return dense_part + F.linear(self._one_hot(), hot_weight)
        # (a transposed view as the table makes embedding_bag ~20x slower: copy the 256-row slice)
        return dense_part + F.embedding_bag(self.hot, hot_weight.t().contiguous(), mode="sum")

    def _one_hot(self) -> Tensor:
        return self.dense.new_zeros(len(self), self.width).scatter_(1, self.hot, 1.0)

    def materialize(self) -> Tensor:
        """(N, width + D) dense input."""
        return torch.cat([self._one_hot(), self.dense if self.rows is None else self.dense[self.rows]], dim=-1)

    @classmethod
    def cat(cls, inputs: Sequence["FactoredInput"]) -> "FactoredInput":
        """The rows of several inputs, in order."""
        if len(inputs) == 1:
            return inputs[0]
        rows, offset = [], 0
        for x in inputs:
            rows.append(offset + (torch.arange(len(x), device=x.hot.device) if x.rows is None else x.rows))
            offset += x.dense.shape[0]
        return cls(torch.cat([x.hot for x in inputs]), torch.cat([x.dense for x in inputs]), inputs[0].width,
                   torch.cat(rows))


def mlp_outputs(x: Tensor | FactoredInput, mlps: Sequence[nn.Sequential]) -> list[Tensor]:
    """Several :func:`mlp` networks on the same input ``x``, their first layers as one matmul.

    Imagination evaluates up to three heads on the same 8192 x 768 features; one
    GEMM of width 3 x 128 runs ~30% faster than three of width 128. A
    :class:`FactoredInput` is read by :meth:`FactoredInput.linear`.
    """
    firsts = [m[0] for m in mlps]
    if any(not isinstance(f, nn.Linear) or f.bias is not None for f in firsts):
        x = x.materialize() if isinstance(x, FactoredInput) else x
        return [m(x) for m in mlps]
    if isinstance(x, FactoredInput):
        hidden = x.linear(torch.cat([f.weight for f in firsts]) if len(mlps) > 1 else firsts[0].weight)
    elif len(mlps) == 1:
        return [mlps[0](x)]
    else:
        hidden = F.linear(x, torch.cat([f.weight for f in firsts]))
    return [m[1:](h) for m, h in zip(mlps, hidden.split([f.out_features for f in firsts], dim=-1))]


class _FrozenGRUGates(torch.autograd.Function):
    """:class:`LayerNormGRUCell` after its gate layer in C, with gradients to the gates and the state
    (not to the norm's parameters: use only where they are frozen)."""

    @staticmethod
    def forward(ctx: Any, gates: Tensor, h: Tensor, norm_weight: Tensor, folded_bias: Tensor,
                eps: float) -> Tensor:
        ctx.save_for_backward(gates, h, norm_weight, folded_bias)
        ctx.eps = eps
        return native.gru_cell(gates, h, norm_weight, folded_bias, eps)

    @staticmethod
    def backward(ctx: Any, d_h_next: Tensor) -> tuple[Tensor | None, ...]:
        gates, h, norm_weight, folded_bias = ctx.saved_tensors
        d_gates, d_h = native.gru_cell_backward(gates, h, norm_weight, folded_bias, ctx.eps, d_h_next)
        return d_gates, d_h, None, None, None


class LayerNormGRUCell(nn.Module):
    """DreamerV3's GRU cell: one fused Linear + LayerNorm for the three gates, update bias -1."""

    #: added to the update gate's pre-activation: biased towards keeping the state
    UPDATE_OFFSET = -1.0

    @classmethod
    def fold_update_offset(cls, norm_bias: Tensor) -> Tensor:
        """The norm's (3D,) bias with :attr:`UPDATE_OFFSET` added to the update gate's third (a new tensor)."""
        D = norm_bias.shape[0] // 3
        return torch.cat([norm_bias[: 2 * D], norm_bias[2 * D:] + cls.UPDATE_OFFSET]).detach()

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.linear = nn.Linear(input_dim + hidden_dim, 3 * hidden_dim, bias=False)
        self.norm = LayerNorm(3 * hidden_dim, eps=1e-3)
        dreamer_init_(self)

    def project_hidden(self, h: Tensor) -> Tensor:
        """(B, hidden_dim) -> (B, 3 * hidden_dim): the state's half of the gate layer.

        Imagination starts repeat the same posterior states many times; this half
        is then computed once per distinct state and indexed (see ActorCritic.imagine).
        """
        return nn.functional.linear(h, self.linear.weight[:, -self.hidden_dim:])

    def _differentiable(self, *inputs: Tensor) -> bool:
        """Whether autograd needs this step's graph (the C kernel has no backward)."""
        return torch.is_grad_enabled() and (any(x.requires_grad for x in inputs)
                                            or any(p.requires_grad for p in self.parameters()))

    def forward(self, x: Tensor, h: Tensor, hidden_proj: Tensor | None = None,
                rows: Tensor | None = None) -> Tensor:
        # x: (B, input_dim), h: (B, hidden_dim) -> (B, hidden_dim); hidden_proj = project_hidden(h) if known.
        # rows (B,): h and hidden_proj hold distinct states that rows indexes (imagination's shared states)
        input_weight = self.linear.weight[:, : -self.hidden_dim]
        if rows is not None and hidden_proj is not None and x.dim() == 2 and not self._differentiable(x, h):
            # the C kernel adds the state's half row by row: no (B, 3D) gather and no addmm copy of it
            input_gates = F.linear(x, input_weight)
            h_next = native.gru_cell(input_gates, h, self.norm.weight, self.fold_update_offset(self.norm.bias),
                                     self.norm.eps, state_pre=hidden_proj.to(input_gates.dtype), rows=rows)
            if h_next is not None:
                return h_next
            gates, h = input_gates + hidden_proj[rows], h[rows]  # (no kernel: GPU, no compiler)
        else:
            if rows is not None:
                h, hidden_proj = h[rows], None if hidden_proj is None else hidden_proj[rows]
            if hidden_proj is None:
                gates = self.linear(torch.cat([x, h], dim=-1))
            elif x.dim() == 2:  # one pass: hidden_proj + x @ W_x.T
                gates = torch.addmm(hidden_proj, x, input_weight.t())
            else:
                gates = F.linear(x, input_weight) + hidden_proj
        if not self._differentiable(gates, h):
            h_next = native.gru_cell(gates, h, self.norm.weight, self.fold_update_offset(self.norm.bias),
                                     self.norm.eps)
            if h_next is not None:  # the C kernel (CPU, no gradients): one pass instead of ~8 ops
                return h_next
        elif not (self.norm.weight.requires_grad or self.norm.bias.requires_grad) and native.gru_cell_applies(
                gates, h):
            # a frozen cell that passes gradients (imagination of a continuous actor through the world
            # model): the C kernel forward and backward, the gates recomputed instead of saved
            return _FrozenGRUGates.apply(gates, h, self.norm.weight, self.fold_update_offset(self.norm.bias),
                                         self.norm.eps)
        reset, candidate, update = self.norm(gates).split(self.hidden_dim, dim=-1)
        reset = torch.sigmoid(reset)
        candidate = torch.tanh(reset * candidate)
        update = torch.sigmoid(update + self.UPDATE_OFFSET)
        return torch.lerp(h, candidate, update)  # = update * candidate + (1 - update) * h, one kernel

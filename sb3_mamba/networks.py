"""Small building blocks shared by the world model and the actor-critic (DreamerV3 style)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sb3_mamba import native
from sb3_mamba.distributions import full_precision


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


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int | None = None, zero_out: bool = False) -> nn.Sequential:
    """``layers`` x (Linear, LayerNorm, SiLU), then an optional Linear head to ``out_dim``.

    ``zero_out`` initialises the head to zero (DreamerV3's reward and critic
    heads start predicting 0, which avoids large early value targets).
    """
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers):
        blocks += [nn.Linear(dim, hidden, bias=False), LayerNorm(hidden, eps=1e-3), nn.SiLU()]
        dim = hidden
    if out_dim is not None:
        # only wide heads gain from padding (it costs time on 1..17 outputs)
        head = (PaddedLinear if out_dim >= 64 and out_dim % 8 else nn.Linear)(dim, out_dim)
        if zero_out:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        blocks.append(head)
    return nn.Sequential(*blocks)


def mlp_outputs(x: Tensor, mlps: Sequence[nn.Sequential]) -> list[Tensor]:
    """Several :func:`mlp` networks on the same input ``x``, their first layers as one matmul.

    Imagination evaluates up to three heads on the same 8192 x 768 features; one
    GEMM of width 3 x 128 runs ~30% faster than three of width 128.
    """
    firsts = [m[0] for m in mlps]
    if len(mlps) == 1 or any(not isinstance(f, nn.Linear) or f.bias is not None for f in firsts):
        return [m(x) for m in mlps]
    hidden = F.linear(x, torch.cat([f.weight for f in firsts])).split([f.out_features for f in firsts], dim=-1)
    return [m[1:](h) for m, h in zip(mlps, hidden)]


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

    def project_hidden(self, h: Tensor) -> Tensor:
        """(B, hidden_dim) -> (B, 3 * hidden_dim): the state's half of the gate layer.

        Imagination starts repeat the same posterior states many times; this half
        is then computed once per distinct state and indexed (see ActorCritic.imagine).
        """
        return nn.functional.linear(h, self.linear.weight[:, -self.hidden_dim:])

    def forward(self, x: Tensor, h: Tensor, hidden_proj: Tensor | None = None) -> Tensor:
        # x: (B, input_dim), h: (B, hidden_dim) -> (B, hidden_dim); hidden_proj = project_hidden(h) if known
        if hidden_proj is None:
            gates = self.linear(torch.cat([x, h], dim=-1))
        elif x.dim() == 2:  # one pass: hidden_proj + x @ W_x.T
            gates = torch.addmm(hidden_proj, x, self.linear.weight[:, : -self.hidden_dim].t())
        else:
            gates = F.linear(x, self.linear.weight[:, : -self.hidden_dim]) + hidden_proj
        if not (torch.is_grad_enabled() and (gates.requires_grad or h.requires_grad)):
            h_next = native.gru_cell(gates, h, self.norm.weight, self.fold_update_offset(self.norm.bias),
                                     self.norm.eps)
            if h_next is not None:  # the C kernel (CPU, no gradients): one pass instead of ~8 ops
                return h_next
        reset, candidate, update = self.norm(gates).split(self.hidden_dim, dim=-1)
        reset = torch.sigmoid(reset)
        candidate = torch.tanh(reset * candidate)
        update = torch.sigmoid(update + self.UPDATE_OFFSET)
        return torch.lerp(h, candidate, update)  # = update * candidate + (1 - update) * h, one kernel

"""The GRU cell's fast forms: the C kernel without gradients, shared states, a frozen cell's backward.

:class:`~sb3_mamba.networks.LayerNormGRUCell` is the math; :func:`gru_step` computes the
same next state with less work where it can:

* ``hidden_proj``: the state's half of the gate layer, computed once per distinct state
  (:func:`project_hidden`) when imagination's starts repeat states;
* ``rows``: ``h`` and ``hidden_proj`` hold P distinct states that ``rows`` (N,) indexes;
  the C kernel adds the state's half row by row, so nothing is gathered to N rows;
* the C kernel (:func:`sb3_mamba.kernels.native.gru_cell`) for the gates and the update
  in one pass over the rows, forward only, or forward and backward where the cell is
  frozen but gradients pass through it (dynamics backpropagation).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sb3_mamba.kernels import native
from sb3_mamba.networks import UPDATE_OFFSET, LayerNormGRUCell, gru_update


def folded_norm_bias(norm_bias: Tensor) -> Tensor:
    """The gate norm's (3D,) bias with :data:`~sb3_mamba.networks.UPDATE_OFFSET` added to the update
    gate's third (a new, detached tensor): the C kernels and the fused scan take the offset this way."""
    D = norm_bias.shape[0] // 3
    return torch.cat([norm_bias[: 2 * D], norm_bias[2 * D :] + UPDATE_OFFSET]).detach()


def project_hidden(cell: LayerNormGRUCell, h: Tensor) -> Tensor:
    """(P, D) states -> (P, 3D): the state's half of the cell's gate layer."""
    return F.linear(h, cell.linear.weight[:, -cell.hidden_dim :])


class _FrozenGRUGates(torch.autograd.Function):
    """The cell after its gate layer in C, with gradients to the gates and the state
    (not to the norm's parameters: used only where they are frozen)."""

    @staticmethod
    def forward(ctx: Any, gates: Tensor, h: Tensor, norm_weight: Tensor, folded_bias: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(gates, h, norm_weight, folded_bias)
        ctx.eps = eps
        h_next = native.gru_cell(gates, h, norm_weight, folded_bias, eps)
        assert h_next is not None  # (callers check gru_cell_applies first)
        return h_next

    @staticmethod
    def backward(ctx: Any, d_h_next: Tensor) -> tuple[Tensor | None, ...]:
        gates, h, norm_weight, folded_bias = ctx.saved_tensors
        d_gates, d_h = native.gru_cell_backward(gates, h, norm_weight, folded_bias, ctx.eps, d_h_next)
        return d_gates, d_h, None, None, None


def _needs_graph(cell: LayerNormGRUCell, *inputs: Tensor) -> bool:
    return torch.is_grad_enabled() and (
        any(x.requires_grad for x in inputs) or any(p.requires_grad for p in cell.parameters())
    )


def gru_step(
    cell: LayerNormGRUCell,
    x: Tensor,
    h: Tensor,
    hidden_proj: Tensor | None = None,
    rows: Tensor | None = None,
    use_c: bool = True,
) -> Tensor:
    """``cell(x, h[rows])`` with the shortcuts of the module docstring.

    :param x: (N, input_dim) inputs.
    :param h: (N, D) states, or (P, D) distinct states with ``rows``.
    :param hidden_proj: ``project_hidden(cell, h)`` if known ((N or P, 3D)).
    :param rows: (N,) into ``h`` and ``hidden_proj``.
    :param use_c: allow the C kernel (else ATen ops only).
    :return: (N, D) next states.
    """
    input_weight = cell.linear.weight[:, : -cell.hidden_dim]
    norm = cell.norm
    c_kernel = use_c and native.posterior_scan_library() is not None
    if c_kernel and rows is not None and hidden_proj is not None and x.dim() == 2 and not _needs_graph(cell, x, h):
        # (N, 3D): the input's half; the kernel adds the state's half row by row
        input_gates = F.linear(x, input_weight)
        h_next = native.gru_cell(
            input_gates,
            h,
            norm.weight,
            folded_norm_bias(norm.bias),
            norm.eps,
            state_pre=hidden_proj.to(input_gates.dtype),
            rows=rows,
        )
        if h_next is not None:
            return h_next
        gates, h = input_gates + hidden_proj[rows], h[rows]
    else:
        if rows is not None:
            h, hidden_proj = h[rows], None if hidden_proj is None else hidden_proj[rows]
        if hidden_proj is None:
            gates = cell.linear(torch.cat([x, h], dim=-1))
        elif x.dim() == 2:  # one pass: hidden_proj + x @ W_x.T
            gates = torch.addmm(hidden_proj, x, input_weight.t())
        else:
            gates = F.linear(x, input_weight) + hidden_proj
    if c_kernel and not _needs_graph(cell, gates, h):
        h_next = native.gru_cell(gates, h, norm.weight, folded_norm_bias(norm.bias), norm.eps)
        if h_next is not None:
            return h_next
    elif c_kernel and not (norm.weight.requires_grad or norm.bias.requires_grad) and native.gru_cell_applies(gates, h):
        # a frozen cell that passes gradients: the C kernel forward and backward, the gates recomputed
        return _FrozenGRUGates.apply(gates, h, norm.weight, folded_norm_bias(norm.bias), norm.eps)
    return gru_update(norm(gates), h)

"""Layers with the same parameters as ``nn.Linear`` and a faster forward on CPU."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PaddedLinear(nn.Linear):
    """``nn.Linear`` whose matmul runs on ``out_features`` rounded up to a multiple of 8 (same parameters).

    Two-hot heads have 255 outputs; the CPU GEMM on 256 columns, padding included, is faster
    than on 255 in the forward and the backward (``benchmarks/results``).
    """

    def forward(self, x: Tensor) -> Tensor:
        pad = -self.out_features % 8
        weight, bias = F.pad(self.weight, (0, 0, 0, pad)), F.pad(self.bias, (0, pad))
        return F.linear(x, weight, bias)[..., : self.out_features]


def pad_wide_heads(module: nn.Module) -> None:
    """Make every biased ``nn.Linear`` of ``module`` with >= 64 outputs, not a multiple of 8, a
    :class:`PaddedLinear` in place (its parameters and state dict unchanged). Narrow layers keep
    ``nn.Linear``: padding 1..17 outputs costs more than it saves."""
    for layer in module.modules():
        if type(layer) is nn.Linear and layer.bias is not None and layer.out_features >= 64 and layer.out_features % 8:
            layer.__class__ = PaddedLinear

"""Small building blocks shared by the world model and the actor-critic (DreamerV3 style)."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor, nn

from sb3_mamba.distributions import full_precision

ModuleT = TypeVar("ModuleT", bound=nn.Module)

#: std of a standard normal truncated to [-2, 2]: dividing by it gives the truncated draw unit variance
TRUNCATED_NORMAL_STD = 0.87962566103423978


def _fans(weight: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear (out, in) or conv weight, as the reference counts them (a transposed
    conv's (in, out, k, k) weight is read like a conv's, so its fans are swapped, as there)."""
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


@torch.no_grad()
def fan_avg_normal_(
    weight: Tensor, fan_in: int | None = None, fan_out: int | None = None, relative_bounds: bool = True
) -> Tensor:
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
def dreamer_init_(module: ModuleT) -> ModuleT:
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


def mlp(
    in_dim: int, hidden: int, layers: int, out_dim: int | None = None, zero_out: bool = False, out_scale: float = 1.0
) -> nn.Sequential:
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
    head = nn.Linear(dim, out_dim) if out_dim is not None else None
    net = dreamer_init_(nn.Sequential(*blocks, *([head] if head is not None else [])))
    if head is not None:
        fan_avg_uniform_(head.weight, 0.0 if zero_out else out_scale)
    return net


#: added to the GRU's update-gate pre-activation: biased towards keeping the state (DreamerV3)
UPDATE_OFFSET = -1.0


def gru_update(gates: Tensor, h: Tensor) -> Tensor:
    """DreamerV3's GRU update from normalised gate pre-activations.

    :param gates: (B, 3D) the gate layer's output after its LayerNorm, as [reset, candidate, update].
    :param h: (B, D) the previous state.
    :return: (B, D) the next state.
    """
    reset, candidate, update = gates.chunk(3, dim=-1)  # (B, D) each
    reset = torch.sigmoid(reset)
    candidate = torch.tanh(reset * candidate)
    update = torch.sigmoid(update + UPDATE_OFFSET)
    return update * candidate + (1 - update) * h


class LayerNormGRUCell(nn.Module):
    """DreamerV3's GRU cell: one Linear on ``[x, h]`` for the three gates, a LayerNorm, :func:`gru_update`.

    :param input_dim: size of ``x``.
    :param hidden_dim: D, size of the state ``h``.
    """

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.linear = nn.Linear(input_dim + hidden_dim, 3 * hidden_dim, bias=False)
        self.norm = LayerNorm(3 * hidden_dim, eps=1e-3)
        dreamer_init_(self)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        # (B, 3D)
        gates = self.norm(self.linear(torch.cat([x, h], dim=-1)))
        # (B, D)
        return gru_update(gates, h)

"""DreamerV3's output distributions: symlog, two-hot regression, unimix categoricals, bounded normal.

Shapes in comments: ``B`` batch, ``T`` time, ``S`` stochastic variables,
``C`` classes, ``A`` action dims, ``K`` two-hot bins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def full_precision(x: Tensor) -> Tensor:
    """bfloat16/float16 -> float32 (distribution and loss math under autocast); other dtypes unchanged."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def symlog(x: Tensor) -> Tensor:
    """``sign(x) * log(1 + |x|)``: squashes large magnitudes, identity-like near 0."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    """Inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


class TwoHot:
    """Discrete regression of scalars over ``num_bins`` equally spaced bins in symlog space.

    The target ``y`` is encoded as weights on its two neighbouring bins of
    ``symlog(y)`` (their weighted mean is exactly ``symlog(y)``); the loss is the
    cross-entropy to the predicted softmax, the prediction is the softmax's
    mean bin, mapped back by ``symexp``. Robust to rewards/returns of any scale.
    """

    def __init__(self, num_bins: int = 255, low: float = -20.0, high: float = 20.0):
        if num_bins < 2:
            raise ValueError(f"TwoHot needs at least 2 bins, got {num_bins}.")
        self.num_bins = num_bins
        self.low, self.high = low, high
        self._bins: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def bins(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        if key not in self._bins:
            self._bins[key] = torch.linspace(self.low, self.high, self.num_bins, device=like.device, dtype=like.dtype)
        return self._bins[key]

    def _neighbours(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(...) targets -> (..., 1) index of the bin below symlog(y) and (..., 1) weight of the bin above."""
        x = symlog(y).clamp(self.low, self.high)
        bins = self.bins(x)
        position = (x - self.low) / (self.high - self.low) * (self.num_bins - 1)
        below = position.floor().long().clamp(0, self.num_bins - 2)
        # clamp: linspace bins are off by ~1e-16, which must not give negative weights
        weight_above = ((x - bins[below]) / (bins[below + 1] - bins[below])).clamp(0.0, 1.0)
        return below.unsqueeze(-1), weight_above.unsqueeze(-1)

    def encode(self, y: Tensor) -> Tensor:
        """(...) targets -> (..., K) two-hot weights."""
        below, weight_above = self._neighbours(y)
        weights = torch.zeros(*y.shape, self.num_bins, device=y.device, dtype=weight_above.dtype)
        weights.scatter_(-1, below, 1.0 - weight_above)
        weights.scatter_add_(-1, below + 1, weight_above)
        return weights

    def log_prob(self, logits: Tensor, y: Tensor) -> Tensor:
        """(..., K) logits, (...) targets -> (...) log-likelihood (the negative loss)."""
        return self.log_prob_normalized(F.log_softmax(full_precision(logits), dim=-1), y)

    def log_prob_normalized(self, log_probs: Tensor, y: Tensor) -> Tensor:
        """:meth:`log_prob` from (..., K) ``log_softmax(logits)`` (share it between several targets).

        Equals ``(encode(y) * log_probs).sum(-1)``, reading only the two bins around each target.
        """
        below, weight_above = self._neighbours(y.to(log_probs.dtype))
        pair = log_probs.gather(-1, torch.cat([below, below + 1], dim=-1))  # (..., 2)
        return torch.lerp(pair[..., 0], pair[..., 1], weight_above.squeeze(-1))

    def mean(self, logits: Tensor) -> Tensor:
        """(..., K) logits -> (...) predicted value."""
        logits = full_precision(logits)
        return symexp(F.softmax(logits, dim=-1) @ self.bins(logits))


def unimix_probs(logits: Tensor, unimix: float) -> Tensor:
    """Softmax mixed with ``unimix`` of the uniform distribution (keeps every class reachable)."""
    probs = F.softmax(full_precision(logits), dim=-1)
    if unimix > 0:
        probs = (1.0 - unimix) * probs + unimix / probs.shape[-1]
    return probs


def one_hot_sample(probs: Tensor) -> Tensor:
    """(..., C) probs -> (..., C) one-hot sample (no gradient)."""
    # inverse-CDF sampling: one uniform per categorical (torch.multinomial is ~10x slower on CPU)
    uniform = torch.rand(*probs.shape[:-1], 1, device=probs.device, dtype=probs.dtype)
    index = torch.searchsorted(probs.detach().cumsum(-1), uniform).clamp_max(probs.shape[-1] - 1)
    return _one_hot(index, probs)


def sample_one_hot(probs: Tensor) -> Tensor:
    """(..., C) probs -> (..., C) one-hot sample with straight-through gradients to ``probs``."""
    return one_hot_sample(probs) + probs - probs.detach()


def one_hot_mode(probs: Tensor) -> Tensor:
    """(..., C) probs -> (..., C) one-hot of the most likely class (no gradient)."""
    return _one_hot(probs.detach().argmax(-1, keepdim=True), probs)


def _one_hot(index: Tensor, like: Tensor) -> Tensor:
    # (..., 1) class indices -> (..., C) one-hot of like's dtype (F.one_hot validates the range: 4x slower)
    return torch.zeros_like(like, memory_format=torch.contiguous_format).scatter_(-1, index, 1.0)


def categorical_kl(probs_p: Tensor, probs_q: Tensor) -> Tensor:
    """KL(p || q) of independent categoricals (..., S, C), summed over the S variables -> (...)."""
    log_ratio = torch.log(probs_p.clamp_min(1e-8)) - torch.log(probs_q.clamp_min(1e-8))
    return (probs_p * log_ratio).sum((-2, -1))


class OneHotCategorical:
    """Actor distribution for ``Discrete`` actions: unimix categorical over one-hot vectors."""

    def __init__(self, logits: Tensor, unimix: float = 0.01):
        self.probs = unimix_probs(logits, unimix)  # (..., C)
        self.log_probs = torch.log(self.probs)

    def sample(self) -> Tensor:
        # no straight-through here: discrete actors are trained by REINFORCE
        return one_hot_sample(self.probs)

    def mode(self) -> Tensor:
        return one_hot_mode(self.probs)

    def log_prob(self, one_hot: Tensor) -> Tensor:
        return (one_hot * self.log_probs).sum(-1)

    def entropy(self) -> Tensor:
        return -(self.probs * self.log_probs).sum(-1)


class BoundedNormal:
    """Actor distribution for ``Box`` actions in [-1, 1]: Normal with tanh mean and std in [min_std, max_std].

    Samples are reparameterised (dynamics backpropagation) and clipped to the
    action bounds, as in DreamerV3's ``normal`` actor.
    """

    def __init__(self, mean_logits: Tensor, std_logits: Tensor, min_std: float = 0.1, max_std: float = 1.0):
        self.mean = torch.tanh(full_precision(mean_logits))  # (..., A)
        self.std = (max_std - min_std) * torch.sigmoid(full_precision(std_logits) + 2.0) + min_std
        # no argument checks: std > 0 holds by construction, and a check reads the values on the host (a GPU
        # waits); NaN is caught after the update stage (sb3_mamba.mamba.SkipNonFinite)
        self._normal = torch.distributions.Normal(self.mean, self.std, validate_args=False)

    def sample(self) -> Tensor:
        """A clipped sample without gradient."""
        with torch.no_grad():
            return self.rsample()

    def rsample(self) -> Tensor:
        sample = self._normal.rsample()
        # clip without killing the gradient (straight-through the clip)
        return sample + (sample.clamp(-1.0, 1.0) - sample).detach()

    def mode(self) -> Tensor:
        return self.mean

    def log_prob(self, action: Tensor) -> Tensor:
        return self._normal.log_prob(action).sum(-1)

    def entropy(self) -> Tensor:
        return self._normal.entropy().sum(-1)

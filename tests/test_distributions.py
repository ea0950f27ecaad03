"""symlog / two-hot round trips and the actor distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sb3_mamba.distributions import (
    BoundedNormal,
    OneHotCategorical,
    TwoHot,
    categorical_kl,
    sample_one_hot,
    symexp,
    symlog,
    unimix_probs,
)


def test_symlog_symexp_round_trip():
    x = torch.tensor([-1e6, -123.4, -1.0, -1e-3, 0.0, 1e-3, 0.5, 7.0, 1e6], dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(x)), x)
    assert symlog(torch.tensor(0.0)) == 0.0
    assert torch.all(torch.sign(symlog(x)) == torch.sign(x))


def test_two_hot_encodes_exact_means_and_round_trips():
    two_hot = TwoHot()
    y = torch.tensor([-300.0, -1.0, -0.1, 0.0, 0.25, 1.0, 42.0, 1000.0], dtype=torch.float64)
    weights = two_hot.encode(y)
    assert weights.shape == (8, 255)
    torch.testing.assert_close(weights.sum(-1), torch.ones(8, dtype=torch.float64))
    assert ((weights > 0).sum(-1) <= 2).all()  # at most two neighbouring bins
    bins = two_hot.bins(y)
    torch.testing.assert_close((weights * bins).sum(-1), symlog(y))  # the weighted bin is exactly symlog(y)
    # logits that put the same mass as the encoding decode back to y
    torch.testing.assert_close(two_hot.mean(torch.log(weights + 1e-30)), y, rtol=1e-6, atol=1e-6)


def test_two_hot_log_prob_reads_the_dense_encoding():
    """The gather-based log-likelihood equals (encode(y) * log_softmax).sum(-1), out-of-range targets too."""
    two_hot = TwoHot()
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 255, generator=generator, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 7, generator=generator, dtype=torch.float64) * 100
    y[0, 0], y[0, 1], y[0, 2] = 1e12, -1e12, 0.0  # clamped at both ends; exactly on a bin
    dense = (two_hot.encode(y) * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(two_hot.log_prob(logits, y), dense)
    (grad_dense,) = torch.autograd.grad(dense.sum(), logits)
    (grad_gather,) = torch.autograd.grad(two_hot.log_prob(logits, y).sum(), logits)
    torch.testing.assert_close(grad_gather, grad_dense)
    torch.testing.assert_close(two_hot.mean(logits), symexp((torch.softmax(logits, -1) * two_hot.bins(y)).sum(-1)))


def test_two_hot_log_prob_is_maximal_at_target():
    two_hot = TwoHot(num_bins=41, low=-5, high=5)
    y = torch.tensor([2.0])
    good = torch.log(two_hot.encode(y) + 1e-6)
    bad = torch.log(two_hot.encode(torch.tensor([-2.0])) + 1e-6)
    assert two_hot.log_prob(good, y) > two_hot.log_prob(bad, y)
    with pytest.raises(ValueError):
        TwoHot(num_bins=1)


def test_unimix_keeps_every_class_reachable():
    logits = torch.tensor([[100.0, -100.0, -100.0, -100.0]])
    probs = unimix_probs(logits, 0.01)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1))
    assert probs.min() >= 0.01 / 4 - 1e-7


def test_straight_through_one_hot_sample():
    torch.manual_seed(0)
    logits = torch.randn(64, 16, 16, requires_grad=True)
    probs = unimix_probs(logits, 0.01)
    sample = sample_one_hot(probs)
    np.testing.assert_allclose(sample.detach().sum(-1).numpy(), 1.0, atol=1e-6)
    assert set(np.unique(sample.detach().numpy().round(5))) <= {0.0, 1.0}
    sample.sum().backward()  # gradients flow to the logits through the probabilities
    assert logits.grad is not None


def test_categorical_kl():
    p = unimix_probs(torch.randn(3, 4, 5), 0.0)
    torch.testing.assert_close(categorical_kl(p, p), torch.zeros(3), atol=1e-6, rtol=0)
    q = unimix_probs(torch.randn(3, 4, 5), 0.0)
    assert (categorical_kl(p, q) > 0).all()


def test_one_hot_categorical_actor():
    torch.manual_seed(0)
    dist = OneHotCategorical(torch.tensor([[5.0, 0.0, 0.0, 0.0]]).repeat(5000, 1))
    samples = dist.sample()
    freq = samples.mean(0)
    assert freq[0] > 0.9 and (freq[1:] > 0).all()  # unimix keeps exploration alive
    torch.testing.assert_close(dist.mode()[0], torch.tensor([1.0, 0, 0, 0]))
    assert dist.entropy().shape == (5000,)
    torch.testing.assert_close(dist.log_prob(samples).exp(), (samples * dist.probs).sum(-1))


def test_bounded_normal_actor():
    torch.manual_seed(0)
    mean_logits = torch.zeros(1000, 2, requires_grad=True)
    dist = BoundedNormal(mean_logits, torch.full((1000, 2), 10.0))
    assert torch.all(dist.std <= 1.0) and torch.all(dist.std >= 0.1)
    sample = dist.rsample()
    assert sample.abs().max() <= 1.0
    sample.sum().backward()
    assert mean_logits.grad.abs().sum() > 0  # reparameterised: dynamics backprop works
    small = BoundedNormal(torch.zeros(2), torch.full((2,), -100.0))
    torch.testing.assert_close(small.std, torch.full((2,), 0.1))


def test_one_hot_sampling_follows_the_probabilities():
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.6, 0.0, 0.3]).expand(20000, 4)
    freq = sample_one_hot(probs).mean(0)
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.6, 0.0, 0.3]), atol=0.015, rtol=0)

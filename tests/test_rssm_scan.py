"""The fused posterior unroll (hand-written backward) equals the autograd step loop.

Both of its implementations: ATen ops per step ("aten", also the GPU path) and the
C kernels of ``sb3_mamba/native`` ("native", on CPU where a C compiler is).
"""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch

import sb3_mamba.rssm_scan as rssm_scan
from sb3_mamba.native import posterior_scan_library
from sb3_mamba.rssm import RSSM

B, T, E, A = 5, 13, 24, 4
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
IMPLEMENTATIONS = ["aten", pytest.param("native", marks=pytest.mark.skipif(
    posterior_scan_library() is None, reason="the C kernels did not build (no C compiler?)"))]


@contextlib.contextmanager
def implementation(name: str):
    """Run the scan on ``name``'s path, and check that path really ran."""
    native_forward = mock.patch.object(rssm_scan.NativeScan, "forward", wraps=rssm_scan.NativeScan.forward)
    use = contextlib.nullcontext() if name == "native" else mock.patch.object(rssm_scan, "native_library",
                                                                             lambda *args: None)
    with use, native_forward as spy:
        yield
    assert spy.called == (name == "native")


def make_rssm(device: str = "cpu") -> RSSM:
    torch.manual_seed(0)
    rssm = RSSM(E, A, deter=32, stoch=4, classes=5, hidden=16)
    with torch.no_grad():  # move off the initialisation (zero biases, unit norms) so every term matters
        for p in rssm.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return rssm.to(device)


def inputs(device: str = "cpu"):
    torch.manual_seed(1)
    embed = torch.randn(B, T, E).to(device).requires_grad_()
    action = torch.randn(B, T, A).to(device)
    is_first = torch.zeros(B, T, dtype=torch.bool, device=device)
    is_first[:, 0] = True
    is_first[1, 5] = is_first[3, 9] = is_first[3, 10] = True  # restarts inside the sequence
    return embed, action, is_first


def values_and_grads(rssm: RSSM, fused: bool, sample: bool):
    device = rssm.initial_deter.device
    embed, action, is_first = inputs(device.type)
    with mock.patch.object(rssm, "fused_observe", fused):
        torch.manual_seed(2)
        post, prior = rssm.observe(embed, action, is_first, sample=sample)
    generator = torch.Generator().manual_seed(3)  # fixed loss weights on every output
    weights = [torch.randn(x.shape, generator=generator).to(device) for x in (post["deter"], post["stoch"],
                                                                              post["logits"], prior["logits"])]
    loss = sum((x * w).sum() for x, w in zip((post["deter"], post["stoch"], post["logits"], prior["logits"]), weights))
    loss = loss + (post["stoch"].softmax(-1) ** 2).sum()  # a nonlinear use of the straight-through sample
    params = dict(embed=embed, **dict(rssm.named_parameters()))
    grads = torch.autograd.grad(loss, list(params.values()))
    return post, dict(zip(params, grads))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("sample", [True, False])
def test_fused_scan_matches_autograd_steps(sample, impl, device):
    if impl == "native" and device == "cuda":
        pytest.skip("the C kernels are CPU-only")
    rssm = make_rssm(device)
    with implementation(impl):
        fused_post, fused_grads = values_and_grads(rssm, True, sample)
    step_post, step_grads = values_and_grads(rssm, False, sample)
    for key in ("deter", "stoch", "logits"):
        torch.testing.assert_close(fused_post[key], step_post[key], rtol=1e-5, atol=1e-5, msg=key)
    assert fused_post["stoch"].sum(-1).allclose(torch.ones(B, T, 4, device=device))  # one-hot samples
    for name, grad in step_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-4, msg=name)
    # every RSSM parameter the posterior touches gets a real gradient
    assert fused_grads["gru.linear.weight"].abs().sum() > 0 and fused_grads["initial_deter"].abs().sum() > 0


def test_fused_scan_detects_a_wrong_gradient():
    """The comparison above is sensitive: a 1% error in one backward term fails it."""
    rssm = make_rssm()
    step_grads = values_and_grads(rssm, False, True)[1]
    original = rssm_scan.aten.tanh_backward

    class Aten:  # aten with a slightly wrong tanh backward
        def __getattr__(self, name):
            if name == "tanh_backward":
                return lambda grad, out: 1.01 * original(grad, out)
            return getattr(torch.ops.aten, name)

    with mock.patch.object(rssm_scan, "aten", Aten()), implementation("aten"):
        fused_grads = values_and_grads(rssm, True, True)[1]
    with pytest.raises(AssertionError):
        torch.testing.assert_close(fused_grads["gru.linear.weight"], step_grads["gru.linear.weight"], rtol=1e-4,
                                   atol=1e-4)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_prepacked_and_plain_matmuls_agree(impl):
    rssm = make_rssm()
    with implementation(impl):
        packed_post, packed_grads = values_and_grads(rssm, True, True)
    with mock.patch.object(rssm_scan, "_onednn_linear_works", lambda dtype=None: False), implementation(impl):
        plain_post, plain_grads = values_and_grads(rssm, True, True)
    torch.testing.assert_close(packed_post["deter"], plain_post["deter"], rtol=1e-5, atol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-4, msg=name)


def test_onednn_check_leaves_the_rng_alone():
    rssm_scan._onednn_linear_works.cache_clear()
    torch.manual_seed(0)
    rssm_scan._onednn_linear_works()
    after_check = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after_check, torch.rand(3))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("prepacked", [True, False], ids=["onednn", "plain-matmul"])  # plain: as on a GPU
def test_fused_scan_under_bfloat16_autocast_is_close(prepacked, impl):
    rssm = make_rssm()
    with torch.no_grad():  # decisive posterior logits: bfloat16 rounding must not flip a latent's mode
        rssm.post_net[-1].weight.mul_(4.0)
    embed, action, is_first = inputs()
    # (with the mode, deter carries no gradient to embed: the GRU's weight and the logits' embed gradient do)
    wrt = [embed, rssm.gru.linear.weight]
    with mock.patch.object(rssm, "fused_observe", False):
        reference, _ = rssm.observe(embed, action, is_first, sample=False)
    reference_grads = torch.autograd.grad(reference["deter"].sum() + reference["logits"].sum(), wrt)
    works = rssm_scan._onednn_linear_works if prepacked else (lambda dtype=None: False)
    with mock.patch.object(rssm_scan, "_onednn_linear_works", works), torch.autocast("cpu", dtype=torch.bfloat16), \
            implementation(impl):
        post, _ = rssm.observe(embed, action, is_first, sample=False)
    assert post["deter"].dtype == torch.float32
    torch.testing.assert_close(post["deter"], reference["deter"], rtol=0.05, atol=0.05)
    grads = torch.autograd.grad(post["deter"].sum() + post["logits"].sum(), wrt)
    for grad, reference_grad in zip(grads, reference_grads):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        torch.testing.assert_close(grad, reference_grad, rtol=0.1, atol=0.1 * reference_grad.abs().max().item())


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_nan_inputs_stay_nan(impl):
    """The kernels must not turn a NaN into a finite number (MAMBA's finite checks rely on it)."""
    rssm = make_rssm()
    embed, action, is_first = inputs()
    embed = embed.detach().clone()
    embed[2, 4] = float("nan")
    with implementation(impl):
        post, _ = rssm.observe(embed, action, is_first, sample=False)
    assert post["logits"][2, 4].isnan().all()
    assert torch.isfinite(post["deter"][2, :4]).all() and torch.isfinite(post["deter"][[0, 1, 3, 4]]).all()

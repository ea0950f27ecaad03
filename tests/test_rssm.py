"""RSSM shapes, and its state reset at meta-episode starts (not at sub-episode boundaries)."""

from __future__ import annotations

import torch

from sb3_mamba.rssm import RSSM

B, T, E, A = 3, 12, 10, 4


def make_rssm() -> RSSM:
    torch.manual_seed(0)
    return RSSM(embed_dim=E, action_dim=A, deter=32, stoch=4, classes=5, hidden=16)


def test_observe_shapes_and_one_hot_latents():
    rssm = make_rssm()
    embed, action = torch.randn(B, T, E), torch.randn(B, T, A)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    post, prior = rssm.observe(embed, action, is_first)
    assert post["deter"].shape == (B, T, 32) and post["stoch"].shape == (B, T, 4, 5)
    assert prior["logits"].shape == (B, T, 4, 5)
    torch.testing.assert_close(post["stoch"].detach().sum(-1), torch.ones(B, T, 4))
    assert RSSM.feat(post).shape == (B, T, 4 * 5 + 32) and rssm.feat_dim == 52
    # the posterior and the prior share the deterministic state
    torch.testing.assert_close(post["deter"], prior["deter"])


def test_imagination_step_shapes():
    rssm = make_rssm()
    state = rssm.initial(7)
    nxt = rssm.img_step(state, torch.zeros(7, A))
    assert nxt["deter"].shape == (7, 32) and nxt["stoch"].shape == (7, 4, 5)


def test_state_resets_only_where_is_first():
    rssm = make_rssm()
    # two sequences with the same steps 6.. but different histories before step 6
    embed, action = torch.randn(1, T, E).repeat(2, 1, 1), torch.randn(1, T, A).repeat(2, 1, 1)
    embed[1, :6] = torch.randn(6, E)
    action[1, :6] = torch.randn(6, A)
    is_first = torch.zeros(2, T, dtype=torch.bool)
    is_first[:, 0] = True

    # no reset at step 6 (a sub-episode boundary): the history still matters afterwards
    post, _ = rssm.observe(embed, action, is_first, sample=False)
    assert not torch.allclose(post["deter"][0, 6:], post["deter"][1, 6:])

    # a new meta-episode at step 6: both sequences continue identically from there
    is_first[:, 6] = True
    post, _ = rssm.observe(embed, action, is_first, sample=False)
    torch.testing.assert_close(post["deter"][0, 6:], post["deter"][1, 6:])
    torch.testing.assert_close(post["stoch"][0, 6:], post["stoch"][1, 6:])
    # and step 6 equals a fresh start from the initial state
    fresh, _ = rssm.observe(embed[:, 6:], action[:, 6:], is_first[:, 6:], sample=False)
    torch.testing.assert_close(post["deter"][:, 6:], fresh["deter"])


def test_gradients_reach_every_parameter():
    rssm = make_rssm()
    embed = torch.randn(B, T, E)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    post, prior = rssm.observe(embed, torch.randn(B, T, A), is_first)
    loss = RSSM.feat(post).pow(2).mean() + prior["logits"].pow(2).mean() + post["logits"].pow(2).mean()
    loss.backward()
    missing = [name for name, p in rssm.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []

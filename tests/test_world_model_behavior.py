"""World-model loss at sampled indices, lambda-returns, return normalisation, imagination."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from sb3_mamba.behavior import ActorCritic, ReturnNormalizer, frozen, lambda_returns
from sb3_mamba.mamba import _imagination_starts
from sb3_mamba.world_model import WorldModel, split_observation_space

SMALL = dict(units=16, head_layers=1, encoder_units=16, encoder_layers=1, deter=16, stoch=3, classes=4, hidden=8)


def batch(B=2, T=9, D=5, A=3):
    torch.manual_seed(0)
    obs = {"vector": torch.randn(B, T, D)}
    action = torch.randn(B, T, A)
    reward = torch.randn(B, T)
    terminated = torch.zeros(B, T)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    mask = torch.ones(B, T, dtype=torch.bool)
    return obs, action, reward, terminated, is_first, mask


def test_world_model_loss_metrics_and_gradients():
    wm = WorldModel(spaces.Box(-1, 1, (5,), np.float32), action_dim=3, **SMALL)
    obs, action, reward, terminated, is_first, mask = batch()
    total, metrics, post = wm.loss(obs, action, reward, terminated, is_first, mask, num_indices=4)
    for key in ("decoder_loss", "reward_loss", "continue_loss", "dyn_loss", "rep_loss", "kl", "wm_loss"):
        assert torch.isfinite(metrics[key])
    assert metrics["dyn_loss"] >= 1.0 and metrics["rep_loss"] >= 1.0  # free bits: at least 1 nat
    assert post["deter"].shape == (2, 9, 16)
    total.backward()
    assert all(p.grad is not None for p in wm.parameters())


def test_prediction_losses_only_at_sampled_indices():
    """With every target except one step poisoned, a single index on the clean step gives a clean loss."""
    wm = WorldModel(spaces.Box(-1, 1, (5,), np.float32), action_dim=3, **SMALL)
    obs, action, reward, terminated, is_first, mask = batch(B=1, T=9)
    mask[:, 1:] = False  # only step 0 is valid: every sampled index must be 0
    obs["vector"][:, 1:] = 1e6  # symlog(1e6) ~ 13.8: a squared error of ~190 per dimension
    _, metrics, _ = wm.loss(obs, action, reward, terminated, is_first, mask, num_indices=16)
    assert metrics["decoder_loss"] < 50
    _, all_steps, _ = wm.loss(obs, action, reward, terminated, is_first, torch.ones_like(mask), num_indices=None)
    assert all_steps["decoder_loss"] > 500


def test_image_and_vector_keys():
    space = spaces.Dict(
        {
            "image": spaces.Box(0, 255, (16, 16, 3), np.uint8),
            "reward_time": spaces.Box(-1, 1, (2,), np.float32),
        }
    )
    vectors, images = split_observation_space(space)
    assert vectors == {"reward_time": 2} and images == {"image": ((16, 16, 3), False)}
    wm = WorldModel(space, action_dim=2, cnn_depth=4, **SMALL)
    obs = wm.preprocess(
        {"image": torch.randint(0, 255, (2, 5, 16, 16, 3), dtype=torch.uint8), "reward_time": torch.zeros(2, 5, 2)}
    )
    assert obs["image"].min() >= -0.5 and obs["image"].max() <= 0.5
    _, _, reward, terminated, is_first, mask = batch(B=2, T=5)
    _, metrics, _ = wm.loss(obs, torch.zeros(2, 5, 2), reward, terminated, is_first, mask, num_indices=3)
    assert torch.isfinite(metrics["image_loss_image"])
    with pytest.raises(ValueError, match="power-of-two"):
        split_observation_space(spaces.Box(0, 255, (12, 12, 3), np.uint8))


def test_lambda_returns_match_the_recursion():
    torch.manual_seed(0)
    H, N, discount, lam = 4, 3, 0.9, 0.8
    reward, cont, value = torch.rand(H, N), torch.rand(H, N), torch.rand(H + 1, N)
    returns = lambda_returns(reward, cont, value, discount, lam)
    expected = torch.zeros(H, N)
    nxt = value[H]
    for t in reversed(range(H)):
        nxt = reward[t] + discount * cont[t] * ((1 - lam) * value[t + 1] + lam * nxt)
        expected[t] = nxt
    torch.testing.assert_close(returns, expected)
    # lambda = 0: one-step TD targets
    td = lambda_returns(reward, cont, value, discount, 0.0)
    torch.testing.assert_close(td, reward + discount * cont * value[1:])


def test_return_normalizer_tracks_percentiles():
    norm = ReturnNormalizer(decay=0.0)  # no smoothing: exactly the last batch's percentiles
    norm.update(torch.linspace(0, 100, 1001))
    assert norm.low.item() == pytest.approx(5.0) and norm.high.item() == pytest.approx(95.0)
    assert norm.scale().item() == pytest.approx(90.0)
    norm.update(torch.zeros(10))
    assert norm.scale().item() == 1.0  # at least 1: small returns are not blown up


def test_frozen_blocks_parameter_gradients_but_not_input_gradients():
    layer = torch.nn.Linear(3, 1)
    x = torch.randn(2, 3, requires_grad=True)
    with frozen(layer):
        layer(x).sum().backward()
    assert layer.weight.grad is None and x.grad is not None
    assert layer.weight.requires_grad


@pytest.mark.parametrize("action_space", [spaces.Discrete(3), spaces.Box(-1, 1, (2,), np.float32)])
def test_actor_critic_losses_update_only_their_networks(action_space):
    action_dim = 3 if isinstance(action_space, spaces.Discrete) else 2
    wm = WorldModel(spaces.Box(-1, 1, (5,), np.float32), action_dim=action_dim, **SMALL)
    ac = ActorCritic(wm.rssm.feat_dim, action_space, units=16, layers=1)
    start = wm.rssm.initial(6)
    actor_loss, critic_loss, metrics = ac.losses(wm, start, horizon=4, discount=0.99, lam=0.95, entropy=3e-4)
    (actor_loss + critic_loss).backward()
    assert all(p.grad is None for p in wm.parameters())  # the model is not trained by the behaviour losses
    assert all(p.grad is not None for p in ac.actor.parameters())
    assert all(p.grad is not None for p in ac.critic.parameters())
    assert all(p.grad is None for p in ac.slow_critic.parameters())
    assert metrics["return_scale"] >= 1.0


def test_imagination_starts_at_valid_indices():
    post = {"deter": torch.arange(2 * 5).float().reshape(2, 5, 1), "stoch": torch.zeros(2, 5, 1, 1)}
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    starts = _imagination_starts(post, mask, num=50)
    assert starts.index is not None and starts.deter.shape == (10, 1)  # 100 starts index 10 states
    values = starts.take(starts.deter).reshape(2, 50)
    assert set(values[0].tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0} and len(set(values[0].tolist())) > 3
    assert set(values[1].tolist()) <= {5.0, 6.0}  # never the padding of the short sequence
    every = _imagination_starts(post, mask, num=None)
    assert every.deter.reshape(-1).tolist() == [0, 1, 2, 3, 4, 5, 6] and every.index is None
    few = _imagination_starts(post, mask, num=3)  # fewer starts than states: gathered
    assert few.index is None and few.deter.shape == (6, 1) and set(few.deter[3:, 0].tolist()) <= {5.0, 6.0}


def test_kl_free_bits_clip_each_step_from_below():
    wm = WorldModel(spaces.Box(-1, 1, (5,), np.float32), action_dim=3, **SMALL)
    obs, action, reward, terminated, is_first, mask = batch()
    torch.manual_seed(1)
    _, none, _ = wm.loss(obs, action, reward, terminated, is_first, mask, num_indices=4, free_bits=0.0)
    torch.manual_seed(1)
    _, huge, _ = wm.loss(obs, action, reward, terminated, is_first, mask, num_indices=4, free_bits=100.0)
    # without free bits the balanced terms are the KL itself; with a huge floor they are the floor
    torch.testing.assert_close(none["dyn_loss"], none["kl"])
    torch.testing.assert_close(huge["dyn_loss"], torch.tensor(100.0))
    torch.testing.assert_close(huge["rep_loss"], torch.tensor(100.0))
    # a constant floor carries no gradient to the model
    wm.zero_grad()
    huge["dyn_loss"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in wm.parameters())


def test_mlp_outputs_equal_each_network_on_its_own():
    from sb3_mamba.kernels.imagination import mlp_outputs
    from sb3_mamba.networks import mlp

    torch.manual_seed(0)
    nets = [
        mlp(12, 8, 2, out_dim=5),
        mlp(12, 8, 1, out_dim=1),
        mlp(12, 6, 2, out_dim=3),
        torch.nn.Sequential(torch.nn.Linear(12, 4)),
    ]  # the last has a bias in its first layer: evaluated on its own
    x = torch.randn(2, 9, 12)
    for merged, alone in zip(mlp_outputs(x, nets), [net(x) for net in nets], strict=True):
        torch.testing.assert_close(merged, alone)
    for merged, alone in zip(mlp_outputs(x, nets[:3]), [net(x) for net in nets[:3]], strict=True):
        torch.testing.assert_close(merged, alone)

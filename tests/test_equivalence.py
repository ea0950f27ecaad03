"""The optimised update computes the same losses and gradients as the plain eager formulation.

``benchmarks/plain_update.py`` is the plain formulation (per-step prior and
posterior layers as in the reference, gathered imagination starts, actor and
critic re-run for their losses). Latent samples are replaced by the mode in both
paths so the comparison is exact up to float rounding; the optimised path runs on
ATen ops here (the C kernels sample in C: ``tests/test_rssm_scan.py`` and
``tests/test_native.py`` show they equal the ATen ops, samples included).
"""

from __future__ import annotations

import copy
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sb3_mamba.distributions as distributions
import sb3_mamba.mamba as mamba
import sb3_mamba.native as native
from benchmarks.plain_update import multinomial_one_hot, plain_update
from sb3_mamba import MAMBA
from tests.test_mamba import TINY, rooms_env
from stable_baselines3.common.env_util import make_vec_env


def mode_one_hot(probs):
    return F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)


def update_losses_and_grads(policy, model: MAMBA, batch, plain: bool):
    """Losses and gradients of one update on ``batch`` with ``policy`` (a copy: its normaliser moves)."""
    wm, ac = policy.world_model, policy.actor_critic
    obs = wm.preprocess(model._obs_to_tensor(batch.obs))
    t = {k: torch.as_tensor(getattr(batch, k)) for k in ("action", "reward", "terminated", "is_first", "mask")}
    torch.manual_seed(0)
    context = plain_update(sampler=mode_one_hot) if plain else mock.patch.object(
        distributions, "one_hot_sample", mode_one_hot)
    with context, mock.patch.object(native, "posterior_scan_library", lambda: None):
        wm_loss, wm_metrics, post = wm.loss(obs, t["action"], t["reward"], t["terminated"], t["is_first"],
                                            t["mask"], model.wm_indices)
        wm_grads = torch.autograd.grad(wm_loss, list(wm.parameters()), allow_unused=True)
        starts = mamba._imagination_starts(post, t["mask"], model.ac_indices)
        actor_loss, critic_loss, ac_metrics = ac.losses(wm, starts, model.imag_horizon, 0.997, 0.95, 3e-4)
        ac_params = list(ac.actor.parameters()) + list(ac.critic.parameters())
        ac_grads = torch.autograd.grad(actor_loss + critic_loss, ac_params)
    return {**wm_metrics, **ac_metrics}, wm_grads, ac_grads


@pytest.mark.parametrize("env_id", ["MetaRooms-1-v0", "MetaPointRobot-v0"])  # REINFORCE and dynamics backprop
def test_optimised_and_plain_updates_agree(env_id):
    env = make_vec_env(env_id, n_envs=2, seed=0, env_kwargs={"sub_episode_length": 10})
    # 40 starts per sequence from 21 states: the shared per-state path is taken
    model = MAMBA("RSSMPolicy", env, seed=0, **{**TINY, "ac_indices": 40, "wm_indices": 12})
    model.learn(120)
    batch = model.replay_buffer.sample_prefixes(4, 21, np.random.default_rng(0))
    fast = update_losses_and_grads(copy.deepcopy(model.policy), model, batch, plain=False)
    plain = update_losses_and_grads(copy.deepcopy(model.policy), model, batch, plain=True)
    for key, value in plain[0].items():
        torch.testing.assert_close(fast[0][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for fast_grads, plain_grads in ((fast[1], plain[1]), (fast[2], plain[2])):
        for g_fast, g_plain in zip(fast_grads, plain_grads, strict=True):
            if g_plain is None:
                assert g_fast is None or not g_fast.any()
                continue
            torch.testing.assert_close(g_fast, g_plain, rtol=1e-4, atol=1e-6)
    assert any(g is not None and g.abs().sum() > 0 for g in fast[2])  # real gradients were compared


def test_plain_update_trains_and_samples_with_multinomial():
    model = MAMBA("RSSMPolicy", rooms_env(), seed=0, **TINY)
    model.learn(60)
    with plain_update():
        assert distributions.one_hot_sample is multinomial_one_hot
        model.train(2)
    assert distributions.one_hot_sample is not multinomial_one_hot

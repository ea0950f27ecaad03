"""MAMBA on the pixel envs: CNN encoder/decoder chosen for the image key, uint8 replay, finite losses, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from sb3_mamba import MAMBA
from sb3_mamba.world_model import ConvDecoder, ConvEncoder
from tests.rendering import env_params
from tests.test_mamba import TINY

PIXEL_IDS = ["MetaReacherPixels-v0", "MetaPandaReacher-v0"]


# both policy names select the CNN for the image key (SB3 itself refuses "CnnPolicy" on Dict spaces)
@pytest.mark.parametrize(
    "env_id, policy",
    [
        pytest.param(param.values[0], policy, marks=param.marks)
        for param, policy in zip(env_params(PIXEL_IDS), ["MultiInputPolicy", "RSSMPolicy"], strict=True)
    ],
)
def test_mamba_trains_on_pixels_and_round_trips(env_id, policy, tmp_path):
    env = make_vec_env(env_id, n_envs=2, seed=0, env_kwargs={"sub_episode_length": 6})
    model = MAMBA(policy, env, seed=0, **{**TINY, "learning_rate": 2e-4})
    wm = model.policy.world_model
    assert isinstance(wm.image_encoders["image"], ConvEncoder) and isinstance(wm.image_decoders["image"], ConvDecoder)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(72, log_interval=1)
    assert model._n_updates > 0
    stored = model.replay_buffer.episodes[0]["obs"]
    # (SB3 wraps image envs in VecTransposeImage: channel-first, which the encoder reads as is)
    assert stored["image"].dtype == np.uint8 and stored["image"].shape[1:] == (3, 64, 64)
    # bytes per stored step: the uint8 image, [r, t/H], the action, reward and flag
    action_dim = env.action_space.shape[0]
    per_step = model.replay_buffer.nbytes / model.replay_buffer.num_entries
    assert per_step <= 64 * 64 * 3 + 2 * 4 + action_dim * 4 + 5
    log = np.genfromtxt(tmp_path / "progress.csv", delimiter=",", names=True)
    for key in ("trainimage_loss_image", "trainwm_loss", "trainactor_loss", "traincritic_loss"):
        values = np.atleast_1d(log[key])
        assert np.isfinite(values[~np.isnan(values)]).all() and (~np.isnan(values)).any(), key
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())

    path = tmp_path / "pixels.zip"
    model.save(path)
    loaded = MAMBA.load(path, env=env)
    obs = env.reset()
    starts = np.ones(2, dtype=bool)
    torch.manual_seed(0)  # the latent is sampled: the same draws for both
    action_a, _ = model.predict(obs, None, starts, deterministic=True)
    torch.manual_seed(0)
    action_b, _ = loaded.predict(obs, None, starts, deterministic=True)
    assert action_a.shape == (2, action_dim) and env.action_space.contains(action_a[0])
    np.testing.assert_array_equal(action_a, action_b)
    env.close()

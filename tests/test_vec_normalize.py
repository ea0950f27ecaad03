"""VecNormalize: the replay keeps raw observations and rewards; sampled batches are normalised (as in SB3)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnvWrapper, VecNormalize

from sb3_mamba import MAMBA
from tests.test_safe_load import SMALL

H = 10  # MetaRooms-1 with 2 sub-episodes of 5 steps


class RawRecorder(VecEnvWrapper):
    """Records, per env, the observations and rewards the envs return before VecNormalize sees them.

    ``obs[i]`` lists env i's meta-episodes one after the other, H + 1 observations each (the
    first from reset, the final one from ``terminal_observation``); ``rewards[i]`` H rewards each.
    """

    def __init__(self, venv):
        super().__init__(venv)
        self.obs = [[] for _ in range(venv.num_envs)]
        self.rewards = [[] for _ in range(venv.num_envs)]

    def reset(self):
        obs = self.venv.reset()
        self.obs = [[o.copy()] for o in obs]
        self.rewards = [[] for _ in range(self.num_envs)]
        return obs

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        for i in range(self.num_envs):
            self.rewards[i].append(float(rewards[i]))
            if dones[i]:
                self.obs[i] += [infos[i]["terminal_observation"].copy(), obs[i].copy()]
            else:
                self.obs[i].append(obs[i].copy())
        return obs, rewards, dones, infos


def test_replay_holds_raw_data_and_batches_are_normalised_when_sampled():
    recorder = RawRecorder(make_vec_env("MetaRooms-1-v0", n_envs=2, seed=0, env_kwargs={"sub_episode_length": 5}))
    # (a wide clip_obs: the final observations come back through unnormalize_obs, which clipping would distort)
    venv = VecNormalize(recorder, clip_obs=1e6)
    model = MAMBA("RSSMPolicy", venv, **SMALL)
    model.learn(66)
    assert model._n_updates > 0

    buffer = model.replay_buffer
    assert len(buffer) == 6  # 3 meta-episodes per env, stored env by env as they finish together
    for index, episode in enumerate(buffer.episodes):
        env, k = index % 2, index // 2
        raw_obs = np.stack(recorder.obs[env][k * (H + 1) : (k + 1) * (H + 1)])
        np.testing.assert_array_equal(episode["obs"][:-1], raw_obs[:-1])
        np.testing.assert_allclose(episode["obs"][-1], raw_obs[-1], rtol=1e-5, atol=1e-6)  # (normalised, back)
        np.testing.assert_array_equal(episode["reward"], [0.0, *recorder.rewards[env][k * H : (k + 1) * H]])
    assert not np.allclose(venv.normalize_obs(buffer.episodes[0]["obs"]), buffer.episodes[0]["obs"])
    # the open meta-episodes hold raw observations too; acting uses the normalised ones
    np.testing.assert_array_equal(buffer._open[0][-1][0], recorder.obs[0][-1])
    np.testing.assert_array_equal(model._last_original_obs, venv.get_original_obs())
    np.testing.assert_array_equal(model._last_obs, venv.normalize_obs(venv.get_original_obs()))

    # a sampled batch is the normaliser, with the current statistics, applied to the raw data
    state = copy.deepcopy(model._rng.bit_generator.state)
    batch = model._sample()
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    raw = buffer.sample_prefixes(model.batch_size, model.wm_horizon() + 1, rng)
    expected_obs = model.policy.world_model.preprocess(torch.as_tensor(venv.normalize_obs(raw.obs)))
    for key, value in expected_obs.items():
        torch.testing.assert_close(batch["obs"][key], value, rtol=0, atol=0)
    np.testing.assert_array_equal(batch["reward"].numpy(), venv.normalize_reward(raw.reward))
    assert not np.allclose(batch["reward"].numpy(), raw.reward) and batch["reward"].dtype == torch.float32
    for field in ("action", "terminated", "is_first", "mask"):
        np.testing.assert_array_equal(batch[field].numpy(), getattr(raw, field))

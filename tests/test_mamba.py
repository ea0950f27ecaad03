"""MAMBA inside SB3's contract: learn/predict/save/load, VecEnvs, callbacks, logging, presets, bad input."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_mamba import MAMBA, NonFiniteLossError
from sb3_mamba_envs.meta_episode import MetaEpisodeEnv, TaskEnv

TINY = dict(
    prefill_episodes=2,
    batch_size=4,
    train_ratio=0.2,
    wm_indices=8,
    ac_indices=8,
    imag_horizon=3,
    units=32,
    dyn_deter=32,
    dyn_stoch=4,
    dyn_discrete=4,
    dyn_hidden=16,
    policy_kwargs=dict(encoder_units=32, encoder_layers=1, actor_critic_layers=1, head_layers=1),
)


def rooms_env(n_envs: int = 2, seed: int = 0, sub_episode_length: int = 10):
    return make_vec_env(
        "MetaRooms-1-v0", n_envs=n_envs, seed=seed, env_kwargs={"sub_episode_length": sub_episode_length}
    )


def tiny_model(env, **kwargs) -> MAMBA:
    return MAMBA("RSSMPolicy", env, **{"seed": 0, **TINY, **kwargs})


def test_learn_trains_and_logs(tmp_path):
    model = tiny_model(rooms_env(), tensorboard_log=str(tmp_path), verbose=0)
    model.learn(200, log_interval=1)
    assert model.num_timesteps == 200
    # prefill: 2 meta-episodes of 20 steps per env in lock-step = 40 steps; then 0.2 updates per step
    assert model._n_updates == pytest.approx(0.2 * (200 - 40), abs=1)
    assert len(model.replay_buffer) == 200 // 20
    events = os.listdir(tmp_path / "MAMBA_1")
    assert any(f.startswith("events.out.tfevents") for f in events)
    assert model.wm_horizon() == 20  # schedule disabled: initial 50 >= H = 20


def test_logged_keys(tmp_path):
    from stable_baselines3.common.logger import configure

    model = tiny_model(rooms_env())
    logger = configure(str(tmp_path), ["csv"])
    model.set_logger(logger)
    model.learn(120, log_interval=2)
    header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    for key in [
        "rollout/ep_rew_mean",
        "rollout/sub_episode_return_0",
        "rollout/sub_episode_return_1",
        "train/wm_loss",
        "train/kl",
        "train/reward_loss",
        "train/actor_loss",
        "train/critic_loss",
        "train/wm_horizon",
        "time/fps",
        "train/buffer_bytes",
    ]:
        assert key in header, key


def test_wm_horizon_schedule_grows_with_env_steps():
    model = tiny_model(rooms_env(sub_episode_length=50), wm_horizon_initial=10, wm_horizon_steps=1000)
    assert model.wm_horizon() == 10
    model._lifetime_timesteps = 500
    assert model.wm_horizon() == 55
    model._lifetime_timesteps = 5000
    assert model.wm_horizon() == 100


def test_continuous_actions_and_single_env_id_string():
    model = MAMBA(
        "RSSMPolicy", "MetaPointRobot-v0", seed=0, **{**TINY, "meta_episode_length": None, "prefill_episodes": 1}
    )
    assert model.n_envs == 1 and model.meta_episode_length == 300
    model.learn(400)
    assert model._n_updates > 0
    action, _state = model.predict(np.zeros(4, np.float32))
    assert action.shape == (2,) and np.all(np.abs(action) <= 1.0)


def test_predict_carries_state_until_episode_start():
    model = tiny_model(rooms_env())
    model.learn(100)
    obs = np.array([[-1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.5, 0.1]], dtype=np.float32)
    _, fresh = model.predict(obs[:1], deterministic=True)
    _, carried = model.predict(obs[1:], state=fresh, episode_start=np.array([False]), deterministic=True)
    # deterministic takes the actor's mode; the latent is sampled (as the reference evaluates): same seed
    torch.manual_seed(1)
    _, restarted = model.predict(obs[1:], state=fresh, episode_start=np.array([True]), deterministic=True)
    torch.manual_seed(1)
    _, new = model.predict(obs[1:], deterministic=True)
    np.testing.assert_allclose(restarted[0], new[0], atol=1e-6)  # a new meta-episode forgets the past
    assert not np.allclose(carried[0], new[0])  # otherwise the history is kept


def test_save_load_round_trip_gives_identical_actions(tmp_path):
    env = rooms_env()
    model = tiny_model(env)
    model.learn(120)
    path = tmp_path / "mamba.zip"
    model.save(path)
    loaded = MAMBA.load(path, env=env)
    assert loaded.num_timesteps == model.num_timesteps and loaded._n_updates == model._n_updates
    assert loaded.preset == "mamba" and loaded.meta_episode_length == 20
    obs = env.reset()
    state_a = state_b = None
    starts = np.ones(2, dtype=bool)
    for _ in range(15):
        torch.manual_seed(len(obs) + int(starts.sum()))  # the latents are sampled: same draws for both
        action_a, state_a = model.predict(obs, state_a, starts, deterministic=True)
        torch.manual_seed(len(obs) + int(starts.sum()))
        action_b, state_b = loaded.predict(obs, state_b, starts, deterministic=True)
        np.testing.assert_array_equal(action_a, action_b)
        np.testing.assert_allclose(state_a[0], state_b[0], atol=1e-6)
        obs, _, starts, _ = env.step(action_a)
    for name in ("model_optimizer", "actor_optimizer", "critic_optimizer"):
        sa, sb = getattr(model.policy, name).state_dict(), getattr(loaded.policy, name).state_dict()
        assert sa["state"].keys() == sb["state"].keys() and len(sa["state"]) > 0
        for key in sa["state"]:
            torch.testing.assert_close(sa["state"][key]["exp_avg"], sb["state"][key]["exp_avg"])
    # the return normaliser and slow critic are part of the policy's state
    torch.testing.assert_close(model.policy.actor_critic.return_norm.high, loaded.policy.actor_critic.return_norm.high)
    # and training continues
    loaded.learn(40, reset_num_timesteps=False)
    assert loaded.num_timesteps == model.num_timesteps + 40


def test_replay_buffer_save_load(tmp_path):
    model = tiny_model(rooms_env())
    model.learn(100)
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    other = tiny_model(rooms_env())
    other.load_replay_buffer(tmp_path / "buffer.pkl")
    assert len(other.replay_buffer) == len(model.replay_buffer) == 4  # 2 envs x 50 steps, H = 20
    with pytest.raises(ValueError, match="MetaEpisodeBuffer"):
        import pickle

        (tmp_path / "bad.pkl").write_bytes(pickle.dumps({"not": "a buffer"}))
        other.load_replay_buffer(tmp_path / "bad.pkl")


def test_evaluate_policy_and_callbacks(tmp_path):
    env = rooms_env()

    class CountSteps(BaseCallback):
        def _on_step(self) -> bool:
            self.calls = getattr(self, "calls", 0) + 1
            return True

    counter = CountSteps()
    eval_cb = EvalCallback(
        rooms_env(n_envs=1, seed=5),
        eval_freq=40,
        n_eval_episodes=2,
        log_path=str(tmp_path / "eval"),
        best_model_save_path=str(tmp_path / "best"),
    )
    ckpt_cb = CheckpointCallback(save_freq=50, save_path=str(tmp_path / "ckpt"), save_replay_buffer=True)
    model = tiny_model(env)
    model.learn(200, callback=[counter, eval_cb, ckpt_cb])
    assert counter.calls == 100  # once per vectorised step of 2 envs
    assert (tmp_path / "eval" / "evaluations.npz").is_file()
    assert (tmp_path / "best" / "best_model.zip").is_file()
    ckpts = sorted(os.listdir(tmp_path / "ckpt"))
    assert any(f.endswith("_steps.zip") for f in ckpts) and any("replay_buffer" in f for f in ckpts)
    mean, _std = evaluate_policy(model, env, n_eval_episodes=4)
    assert np.isfinite(mean) and -2.0 <= mean <= 40.0  # Rooms-1, K=2, T=10


def test_progress_bar_runs():
    tiny_model(rooms_env()).learn(60, progress_bar=True)


def test_stop_training_callback():
    class StopEarly(BaseCallback):
        def _on_step(self) -> bool:
            return self.num_timesteps < 30

    model = tiny_model(rooms_env())
    model.learn(1000, callback=StopEarly())
    assert model.num_timesteps == 30


@pytest.mark.parametrize("preset", ["mamba", "dreamer_tune", "dreamer_vanilla"])
def test_presets_train_on_the_same_env(preset):
    small = {
        k: v
        for k, v in TINY.items()
        if k not in ("units", "dyn_deter", "dyn_stoch", "dyn_discrete", "dyn_hidden", "wm_indices", "ac_indices")
    }
    model = MAMBA("RSSMPolicy", rooms_env(), preset=preset, seed=0, batch_length=8, **small)
    expected = {
        "mamba": (128, 16, 64, "prefix"),
        "dreamer_tune": (128, 16, 64, "window"),
        "dreamer_vanilla": (512, 32, 512, "window"),
    }[preset]
    sizes = model.network_sizes
    assert (sizes["units"], sizes["dyn_stoch"], sizes["dyn_hidden"], model.sampling) == expected
    model.learn(60)
    assert model._n_updates > 0


def test_dict_image_observations_use_the_cnn():
    class ImageTask(TaskEnv[int]):
        def __init__(self):
            self.observation_space = spaces.Box(0, 255, (16, 16, 3), np.uint8)
            self.action_space = spaces.Discrete(2)

        def sample_tasks(self, n):
            return [int(x) for x in self.np_random.integers(2, size=n)]

        def set_task(self, task):
            self._task = task

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros((16, 16, 3), np.uint8), {}

        def step(self, action):
            image = np.full((16, 16, 3), 200 * int(action == self.task), np.uint8)
            return image, float(action == self.task), False, False, {}

    env = make_vec_env(lambda: MetaEpisodeEnv(ImageTask(), 2, 5), n_envs=2, seed=0)
    model = MAMBA("MultiInputPolicy", env, seed=0, **TINY)
    assert "image" in model.policy.world_model.image_encoders
    model.learn(60)
    assert model._n_updates > 0
    assert model.replay_buffer.episodes[0]["obs"]["image"].dtype == np.uint8
    action, _ = model.predict(env.reset())
    assert action.shape == (2,)


class _BinaryActionEnv(gym.Env):
    observation_space = spaces.Box(-1, 1, (2,), np.float32)
    action_space = spaces.MultiBinary(2)

    def reset(self, *, seed=None, options=None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, True, {}


def test_unsupported_spaces_raise_clear_errors():
    with pytest.raises(ValueError, match="Box and Discrete"):
        MAMBA("RSSMPolicy", _BinaryActionEnv(), meta_episode_length=10)

    class TupleObsEnv(_BinaryActionEnv):
        observation_space = spaces.Box(-1, 1, (2, 3), np.float32)
        action_space = spaces.Discrete(2)

    with pytest.raises(ValueError, match="Unsupported observation space"):
        MAMBA("RSSMPolicy", TupleObsEnv(), meta_episode_length=10)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"discount": 1.5}, "discount"),
        ({"sampling": "random"}, "sampling"),
        ({"preset": "dreamer_v9"}, "preset"),
        ({"wm_indices": -3}, "wm_indices"),
        ({"dyn_deter": 0}, "dyn_deter"),
        ({"train_ratio": 0.0}, "train_ratio"),
        ({"buffer_size": 10}, "buffer_size"),
        ({"wm_horizon_initial": 5, "wm_horizon_steps": 0}, "wm_horizon_steps"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MAMBA("RSSMPolicy", rooms_env(), **{**TINY, **kwargs})


def test_nan_loss_stops_training_without_corrupting_the_model():
    model = tiny_model(rooms_env())
    model.learn(60)
    with torch.no_grad():
        model.policy.world_model.reward_head[-1].bias.fill_(float("nan"))
    before = {k: v.clone() for k, v in model.policy.world_model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="reward_loss"):
        model.train(1)
    after = model.policy.world_model.state_dict()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, equal_nan=True)


def test_missing_horizon_is_a_clear_error():
    with pytest.raises(ValueError, match="meta_episode_length"):
        MAMBA("RSSMPolicy", gym.make("CartPole-v1").unwrapped, **TINY)


def test_same_seed_same_training_on_cpu():
    params = []
    for _ in range(2):
        model = tiny_model(rooms_env(seed=3), seed=7)
        model.learn(100)
        params.append(torch.nn.utils.parameters_to_vector(model.policy.parameters()).detach().clone())
    torch.testing.assert_close(params[0], params[1], rtol=0, atol=0)
    other = tiny_model(rooms_env(seed=3), seed=8)
    other.learn(100)
    assert not torch.equal(params[0], torch.nn.utils.parameters_to_vector(other.policy.parameters()))


def test_learning_rates_that_are_neither_numbers_nor_schedules_are_refused_clearly():
    with pytest.raises(ValueError, match="learning_rate must be a number or a schedule"):
        tiny_model(rooms_env(), learning_rate=[1e-4])

"""Every registered meta-RL env: checkers, seeding, task hook, bad input, rendering, VecEnvs."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from sb3_mamba_envs import ENV_IDS
from tests.rendering import can_render, env_params

CHEAP_IDS = [i for i in ENV_IDS if "Reacher" not in i]


def _play(env: gym.Env, actions_seed: int, seed: int, options=None):
    """One meta-episode with a seeded random action stream; returns (observations, rewards, infos)."""
    obs, _ = env.reset(seed=seed, options=options)
    env.action_space.seed(actions_seed)
    observations, rewards, infos = [obs], [], []
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        done = terminated or truncated
    if isinstance(observations[0], dict):  # pixel envs: {"image", "reward_time"} -> arrays per key
        return {k: np.array([o[k] for o in observations]) for k in observations[0]}, np.array(rewards), infos
    return np.array(observations), np.array(rewards), infos


def assert_same_observations(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    else:
        np.testing.assert_array_equal(a, b)


def test_all_paper_ids_registered():
    expected = (
        ["MetaPointRobot-v0", "MetaPointRobotWind-v0", "MetaEscapeRoom-v0"]
        + [f"MetaRooms-{n}-v0" for n in range(1, 9)]
        + [f"MetaReacher-{n}-v0" for n in range(1, 5)]
        + ["MetaReacherPixels-v0", "MetaHumanoidDir-v0", "MetaPandaReacher-v0"]
    )
    assert sorted(ENV_IDS) == sorted(expected)
    for env_id in expected:
        assert env_id in gym.registry


@pytest.mark.parametrize("env_id", env_params())
def test_env_checkers_pass_without_warnings(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped, skip_render_check="Reacher" in env_id and not _can_render())
        sb3_check_env(env.unwrapped, warn=True)
    assert [str(w.message) for w in caught] == []
    env.close()


_can_render = can_render


def test_import_free_make_and_registration_on_import():
    code = (
        "import gymnasium as gym\n"
        "assert 'MetaRooms-4-v0' not in gym.registry\n"
        "env = gym.make('sb3_mamba_envs:MetaRooms-4-v0')\n"
        "assert 'MetaRooms-4-v0' in gym.registry\n"
        "print(env.unwrapped.task_env.num_rooms)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "4"
    code = "import sb3_mamba, gymnasium as gym; print(gym.make('MetaRooms-2-v0').unwrapped.task_env.num_rooms)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"


@pytest.mark.parametrize("env_id", env_params())
def test_seed_reproduces_task_and_trajectory(env_id):
    kwargs = {"sub_episode_length": 30} if "Reacher" in env_id else {}
    env = gym.make(env_id, **kwargs)
    obs_a, rew_a, _ = _play(env, actions_seed=3, seed=42)
    task_a = np.array(env.unwrapped.task, dtype=np.float64)
    obs_b, rew_b, _ = _play(env, actions_seed=3, seed=42)
    np.testing.assert_array_equal(task_a, np.array(env.unwrapped.task, dtype=np.float64))
    assert_same_observations(obs_a, obs_b)
    np.testing.assert_array_equal(rew_a, rew_b)
    # other seeds give other tasks (Rooms-1 has only 4 tasks, so look at several)
    tasks = set()
    for seed in range(8):
        env.reset(seed=seed)
        tasks.add(np.array(env.unwrapped.task, dtype=np.float64).tobytes())
    assert len(tasks) > 1
    env.close()


@pytest.mark.parametrize("env_id", env_params())
def test_task_hook(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    tasks = env.unwrapped.sample_tasks(5)
    assert len(tasks) == 5
    for task in tasks:
        env.reset(options={"task": task})
        np.testing.assert_array_equal(np.asarray(env.unwrapped.task), np.asarray(task))
    # a seeded reset with a fixed task still plays that task
    env.reset(seed=123, options={"task": tasks[2]})
    np.testing.assert_array_equal(np.asarray(env.unwrapped.task), np.asarray(tasks[2]))
    with pytest.raises(ValueError, match="task"):
        env.reset(options={"task": np.zeros(7)})
    env.close()


def test_sample_tasks_follow_the_task_distributions():
    env = gym.make("MetaPointRobot-v0")
    env.reset(seed=0)
    goals = np.array(env.unwrapped.sample_tasks(500))
    np.testing.assert_allclose(np.linalg.norm(goals, axis=1), 1.0)
    assert goals[:, 1].min() >= 0.0  # upper semicircle

    env = gym.make("MetaEscapeRoom-v0")
    env.reset(seed=0)
    angles = np.array(env.unwrapped.sample_tasks(500))
    assert 0.0 <= angles.min() and angles.max() <= np.pi

    env = gym.make("MetaRooms-5-v0")
    env.reset(seed=0)
    tasks = np.array(env.unwrapped.sample_tasks(400))  # (400, 5, 2)
    candidates = env.unwrapped.task_env.goal_candidates
    for room in range(5):
        chosen = {tuple(g) for g in tasks[:, room]}
        assert chosen == {tuple(c) for c in candidates[room]}  # all four corners drawn

    env = gym.make("MetaReacher-3-v0")
    env.reset(seed=0)
    goals = np.array(env.unwrapped.sample_tasks(2000)).reshape(-1, 2)
    radius = np.linalg.norm(goals, axis=1)
    assert radius.max() <= 0.195
    # uniform in the disc: a quarter of the goals lie within half the radius
    assert abs(np.mean(radius <= 0.195 / 2) - 0.25) < 0.03


@pytest.mark.parametrize(
    "env_id, bad_action",
    [
        ("MetaRooms-3-v0", 4),
        ("MetaRooms-3-v0", -1),
        ("MetaRooms-3-v0", 1.5),
        ("MetaPointRobot-v0", np.array([1.5, 0.0])),
        ("MetaPointRobot-v0", np.array([0.0])),
        ("MetaEscapeRoom-v0", np.array([np.nan, 0.0])),
        ("MetaReacher-1-v0", np.array([0.0, -2.0])),
    ],
)
def test_out_of_space_action_raises_clear_error(env_id, bad_action):
    env = gym.make(env_id)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"[Aa]ction"):
        env.unwrapped.step(bad_action)
    # the env is still usable afterwards
    env.unwrapped.step(env.action_space.sample())


def test_rooms_stay_action_option():
    env = gym.make("MetaRooms-2-v0", stay_action=True)
    assert env.action_space.n == 5
    obs, _ = env.reset(seed=0)
    obs2, *_ = env.step(4)
    np.testing.assert_array_equal(obs[:2], obs2[:2])
    assert gym.make("MetaRooms-2-v0").action_space.n == 4


@pytest.mark.parametrize(
    "env_id, kwargs, argument",
    [
        ("MetaRooms-4-v0", {"num_rooms": 0}, "num_rooms"),
        ("MetaRooms-4-v0", {"num_room": 3}, "num_room"),
        ("MetaRooms-4-v0", {"sub_episode_length": 0}, "sub_episode_length"),
        ("MetaPointRobot-v0", {"num_sub_episodes": -1}, "num_sub_episodes"),
        ("MetaPointRobot-v0", {"goal_radius": -0.2}, "goal_radius"),
        ("MetaPointRobotWind-v0", {"wind_std": -1.0}, "wind_std"),
        ("MetaEscapeRoom-v0", {"door_width": 0.0}, "door_width"),
        ("MetaReacher-2-v0", {"num_goals": 0}, "num_goals"),
        ("MetaReacher-2-v0", {"goal": 1}, "goal"),
        ("MetaReacher-1-v0", {"pixel": True}, "pixel"),
        ("MetaHumanoidDir-v0", {"sub_episode_length": 0}, "sub_episode_length"),
        ("MetaHumanoidDir-v0", {"render_mode": "ansi"}, "render_mode"),
        ("MetaPandaReacher-v0", {"goal_radius": 0.1}, "goal_radius"),
        ("MetaPandaReacher-v0", {"num_sub_episodes": 0}, "num_sub_episodes"),
    ],
)
def test_bad_kwargs_raise_value_error_naming_the_argument(env_id, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        gym.make(env_id, **kwargs)


def test_unsupported_render_mode_raises():
    # (gym.make turns "human" into its HumanRendering wrapper over rgb_array; the class itself refuses it)
    from sb3_mamba_envs.rooms import MetaRooms

    with pytest.raises(ValueError, match="render_mode"):
        MetaRooms(render_mode="ansi")


@pytest.mark.parametrize("env_id", env_params())
def test_rgb_array_frames_show_motion(env_id):
    if ("Reacher" in env_id or "Humanoid" in env_id) and "Panda" not in env_id and not _can_render():
        pytest.skip("MuJoCo cannot render here: install EGL (libegl1) or OSMesa and set MUJOCO_GL")
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    first = env.render()
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
    assert min(first.shape[:2]) >= 256, first.shape  # large enough to see in a video (record-video)
    assert first.std() > 1.0  # not a constant image
    space = env.action_space
    action = 1 if isinstance(space, gym.spaces.Discrete) else np.ones(space.shape, np.float32)
    for _ in range(3):
        env.step(action)
    moved = env.render()
    assert moved.shape == first.shape
    assert np.abs(moved.astype(int) - first.astype(int)).sum() > 0
    env.close()


def test_rooms_frame_size_follows_an_explicit_tile_size():
    from sb3_mamba_envs.rooms import RoomsTask

    for num_rooms, tile_size in ((1, 16), (2, 8)):
        task = RoomsTask(num_rooms=num_rooms, render_mode="rgb_array", tile_size=tile_size)
        task.set_task(task.goal_candidates[:, 0])
        task.reset(seed=0)
        # (6N - 3 cells + 2 walls) x (3 cells + 2 walls)
        assert task.render().shape == (5 * tile_size, (6 * num_rooms - 1) * tile_size, 3)


@pytest.mark.parametrize("vec_env_cls", [DummyVecEnv, SubprocVecEnv])
def test_vec_env_plays_whole_meta_episodes(vec_env_cls):
    # Subprocess workers (forkserver) start without our registrations: the
    # "module:ID" form makes each worker import sb3_mamba_envs itself.
    env_id = "sb3_mamba_envs:MetaRooms-2-v0"
    vec_env = make_vec_env(env_id, n_envs=2, seed=0, vec_env_cls=vec_env_cls, env_kwargs={"sub_episode_length": 10})
    obs = vec_env.reset()
    assert obs.shape == (2, 4)
    horizon = 20
    for t in range(horizon):
        obs, _rewards, dones, infos = vec_env.step(np.array([1, 0]))
        np.testing.assert_allclose(obs[:, -1], 0.0 if t == horizon - 1 else (t + 1) / horizon, atol=1e-6)
    assert dones.all()
    for info in infos:
        assert len(info["sub_episode_returns"]) == 2
        assert info["TimeLimit.truncated"]
        assert info["terminal_observation"][-1] == pytest.approx(1.0)
        assert info["episode"]["l"] == horizon  # Monitor sees one episode per meta-episode
    vec_env.close()


def test_reacher_in_subprocess_vec_env():
    vec_env = make_vec_env(
        "sb3_mamba_envs:MetaReacher-2-v0",
        n_envs=2,
        seed=0,
        vec_env_cls=SubprocVecEnv,
        env_kwargs={"sub_episode_length": 5},
    )
    vec_env.reset()
    for _ in range(15):
        obs, _, dones, infos = vec_env.step(np.zeros((2, 2), dtype=np.float32))
    assert dones.all() and obs.shape == (2, 6)
    assert len(infos[0]["sub_episode_returns"]) == 3
    vec_env.close()


def _snapshot_obs(obs):
    return {k: v.copy() for k, v in obs.items()} if isinstance(obs, dict) else obs.copy()


@pytest.mark.parametrize("env_id", env_params())
def test_snapshots_continue_the_meta_episode(env_id):
    """``get_state``/``set_state`` (what an exact resume uses) continue a meta-episode in a fresh env."""
    kwargs = {"sub_episode_length": 15} if env_id not in ("MetaHumanoidDir-v0",) else {}
    source, target = gym.make(env_id, **kwargs), gym.make(env_id, **kwargs)
    source.reset(seed=1)
    target.reset(seed=2)
    source.action_space.seed(0)
    for _ in range(7):
        source.step(source.action_space.sample())
    target.unwrapped.set_state(pickle.loads(pickle.dumps(source.unwrapped.get_state())))
    for _ in range(40):
        action = source.action_space.sample()
        a, b = source.step(action), target.step(action)
        assert a[1:4] == b[1:4]
        if env_id == "MetaPandaReacher-v0":
            # PyBullet reads cached link poses on the first step after a restore: ~1e-4 m apart
            np.testing.assert_allclose(a[0]["image"], b[0]["image"], atol=255)
            assert np.abs(a[0]["image"].astype(int) - b[0]["image"]).mean() < 3.0
        else:
            assert_same_observations(_snapshot_obs(a[0]), _snapshot_obs(b[0]))
        if a[2] or a[3]:
            assert_same_observations(source.reset()[0], target.reset()[0])

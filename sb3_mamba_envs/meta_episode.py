"""One Gymnasium episode = one meta-episode of K sub-episodes on the same task.

The paper's setting (Sec. 2.1): a task (an MDP) is drawn, and the agent plays K
consecutive sub-episodes of at most T steps in it, H = K * T. The agent sees
the augmented observation ``[o_t, r_{t-1}, t / H]`` (Sec. 3.3): the task
observation, the previous reward (0 at the start) and the time since the
meta-episode began, which is *not* reset at sub-episode boundaries.

Two pieces:

* :class:`TaskEnv` -- a plain single-(sub-)episode Gymnasium env with a task
  hook (``sample_tasks``, ``set_task``, ``task``). Built-in envs and user envs
  implement it.
* :class:`MetaEpisodeEnv` -- turns any :class:`TaskEnv` into the meta-episode
  format: it samples the task at ``reset``, resets the task env at every
  sub-episode boundary (same task), augments the observation and keeps the
  per-sub-episode bookkeeping in ``info``.

``MetaEpisodeEnv`` is a :class:`gymnasium.Env`, not a :class:`gymnasium.Wrapper`,
on purpose: it *is* the environment the agent interacts with, so
``env.unwrapped`` is the meta-episode env (``env.unwrapped.task``,
``env.unwrapped.sample_tasks(n)``) and the environment checkers, which test
``env.unwrapped``, check the meta-episode semantics rather than the inner
sub-episode env. The inner env is ``env.unwrapped.task_env``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Generic, SupportsFloat, TypeVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

TaskT = TypeVar("TaskT")

#: Key of the augmentation vector ``[r_{t-1}, t/H]`` in Dict observations.
REWARD_TIME_KEY = "reward_time"
#: Key of the image in Dict observations built from an image task env.
IMAGE_KEY = "image"


class TaskEnv(gym.Env, Generic[TaskT]):
    """A single-sub-episode environment whose dynamics/reward depend on a task.

    Subclasses implement the usual ``reset``/``step`` for *one* sub-episode of
    the current task, plus the task hook:

    * :meth:`sample_tasks` draws tasks from ``self.np_random`` (so a seeded
      reset of the meta-episode env makes them reproducible);
    * :meth:`set_task` fixes the task; it is called once per meta-episode,
      before the first sub-episode's ``reset``. ``reset`` must keep the task.

    ``MetaEpisodeEnv`` shares its random generator with the task env, so
    everything random (tasks, initial states, noise) comes from one seeded
    stream.
    """

    _task: TaskT | None = None
    #: Lowest and highest reward of one step: bounds the ``r_{t-1}`` entry of the
    #: augmented observation (finite bounds keep the env checkers quiet).
    reward_bounds: tuple[float, float] = (-np.inf, np.inf)

    def sample_tasks(self, n: int) -> list[TaskT]:
        """Return ``n`` tasks drawn from the task distribution using ``self.np_random``."""
        raise NotImplementedError

    def set_task(self, task: TaskT) -> None:
        """Fix the task for the following sub-episodes (a new meta-episode begins)."""
        raise NotImplementedError

    @property
    def task(self) -> TaskT:
        """The current task."""
        if self._task is None:
            raise RuntimeError(f"{type(self).__name__} has no task yet: call reset() first.")
        return self._task

    #: private attributes that are not episode state (handles, caches): left out of :meth:`get_state`
    _not_state: tuple[str, ...] = ()

    def get_state(self) -> dict[str, Any]:
        """A picklable copy of the sub-episode in progress (used to resume a killed run exactly).

        By convention the private attributes (``_position``, ``_task``, ...) are
        the episode state and the public ones the configuration; the random
        generator is saved by :class:`MetaEpisodeEnv`. Envs holding simulator
        state elsewhere (physics) extend this.
        """
        skip = {"_np_random", "_np_random_seed", *self._not_state}
        return {k: copy.deepcopy(v) for k, v in vars(self).items() if k.startswith("_") and k not in skip}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`get_state` snapshot (the env has been reset once, so its simulator exists)."""
        vars(self).update(copy.deepcopy(state))


def check_action(space: spaces.Space, action: Any) -> Any:
    """Validate ``action`` against ``space``; return it in the space's native form.

    Raises ``ValueError`` with the offending value instead of letting an
    out-of-space action silently move the agent (clipping would hide bugs in
    the caller, e.g. an unscaled policy output).
    """
    if isinstance(space, spaces.Discrete):
        arr = np.asarray(action)
        if arr.size != 1 or arr.dtype.kind not in "iu":
            raise ValueError(
                f"Action {action!r} is not an integer of the action space {space} "
                f"(got dtype {arr.dtype}, shape {arr.shape})."
            )
        value = int(arr.reshape(()))
        if not space.start <= value < space.start + space.n:
            raise ValueError(f"Action {value} is outside the action space {space}.")
        return value
    if isinstance(space, spaces.Box):
        try:
            with np.errstate(over="ignore"):  # an overflow to inf is reported below
                arr = np.asarray(action, dtype=space.dtype)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Action {action!r} cannot be read as a {space.dtype} array for {space}.") from exc
        if arr.shape != space.shape:
            raise ValueError(f"Action has shape {arr.shape}, the action space {space} expects {space.shape}.")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"Action {arr} contains NaN or Inf.")
        if np.any(arr < space.low) or np.any(arr > space.high):
            raise ValueError(
                f"Action {arr} is outside the action space bounds [{space.low}, {space.high}]; "
                "scale or clip it before stepping."
            )
        return arr
    if not space.contains(action):
        raise ValueError(f"Action {action!r} is outside the action space {space}.")
    return action


def reject_unknown_kwargs(env_name: str, kwargs: dict[str, Any], valid: Sequence[str]) -> None:
    """Raise ``ValueError`` naming unknown constructor arguments (e.g. a typo in ``gym.make`` kwargs)."""
    if kwargs:
        raise ValueError(f"{env_name} got unknown argument(s) {sorted(kwargs)}; valid arguments are {sorted(valid)}.")


def require(condition: bool, env_name: str, argument: str, value: Any, requirement: str) -> None:
    """Raise ``ValueError`` naming ``argument`` if ``condition`` does not hold."""
    if not condition:
        raise ValueError(f"{env_name}: invalid {argument}={value!r}; {requirement}.")


def require_int(env_name: str, argument: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` naming ``argument`` if it is not an integer >= minimum."""
    require(
        bool(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum),
        env_name,
        argument,
        value,
        f"must be an integer >= {minimum}",
    )
    return int(value)


def _augmented_space(obs_space: spaces.Space, reward_bounds: tuple[float, float]) -> spaces.Space:
    """The observation space of ``[o, r_{t-1}, t/H]`` for a task observation space."""
    reward_time = spaces.Box(
        low=np.array([reward_bounds[0], 0.0], dtype=np.float32),
        high=np.array([reward_bounds[1], 1.0], dtype=np.float32),
        dtype=np.float32,
    )
    if isinstance(obs_space, spaces.Box) and len(obs_space.shape) == 1:
        return spaces.Box(
            low=np.concatenate([obs_space.low.astype(np.float32), reward_time.low]),
            high=np.concatenate([obs_space.high.astype(np.float32), reward_time.high]),
            dtype=np.float32,
        )
    if isinstance(obs_space, spaces.Box) and len(obs_space.shape) == 3:
        return spaces.Dict({IMAGE_KEY: obs_space, REWARD_TIME_KEY: reward_time})
    if isinstance(obs_space, spaces.Dict):
        if REWARD_TIME_KEY in obs_space.spaces:
            raise ValueError(f"Task observation space already has a '{REWARD_TIME_KEY}' key.")
        return spaces.Dict({**obs_space.spaces, REWARD_TIME_KEY: reward_time})
    raise ValueError(
        f"Unsupported task observation space {obs_space}: use a 1-D Box (state), "
        "a 3-D uint8 Box (image, HxWxC) or a Dict of those."
    )


class MetaEpisodeEnv(gym.Env, Generic[TaskT]):
    """Play ``num_sub_episodes`` sub-episodes of a :class:`TaskEnv` as one episode.

    :param task_env: the single-sub-episode env with a task hook.
    :param num_sub_episodes: K, sub-episodes per meta-episode (same task).
    :param sub_episode_length: T, the most steps of one sub-episode. A
        sub-episode also ends early when the task env terminates or
        truncates (e.g. a fallen humanoid); then the next one starts, so
        meta-episodes may be shorter than H = K * T.
    :param render_mode: only ``"rgb_array"`` (or None); forwarded to the task env.

    Observation: ``[o_t, r_{t-1}, t/H]`` (float32) for vector task envs, or a
    ``Dict`` with the task env's keys (``"image"`` for an image Box) plus
    ``"reward_time" = [r_{t-1}, t/H]``.

    ``info`` of every step has ``sub_episode`` (index of the sub-episode the
    step belongs to) and ``sub_episode_end``; the last step also has
    ``sub_episode_returns`` and ``sub_episode_lengths`` (K entries each).
    The meta-episode ends with ``truncated=True`` after the last
    sub-episode, or ``terminated=True`` if that sub-episode reached a real
    terminal state. After a boundary inside the meta-episode the observation
    is the first one of the new sub-episode (its ``r_{t-1}`` is the reward of
    the step that ended the previous one).

    ``reset(options={"task": task})`` plays a given task (evaluation sets);
    otherwise a task is drawn from ``self.np_random``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        task_env: TaskEnv[TaskT],
        num_sub_episodes: int,
        sub_episode_length: int,
        render_mode: str | None = None,
    ) -> None:
        name = type(self).__name__
        num_sub_episodes = require_int(name, "num_sub_episodes", num_sub_episodes)
        sub_episode_length = require_int(name, "sub_episode_length", sub_episode_length)
        require(
            render_mode is None or render_mode in self.metadata["render_modes"],
            name,
            "render_mode",
            render_mode,
            f"must be one of {self.metadata['render_modes']} or None",
        )
        for hook in ("sample_tasks", "set_task"):
            if not callable(getattr(task_env, hook, None)):
                raise TypeError(f"{type(task_env).__name__} has no '{hook}' method: subclass TaskEnv.")
        self.task_env = task_env
        self.num_sub_episodes = num_sub_episodes
        self.sub_episode_length = sub_episode_length
        self.horizon = self.num_sub_episodes * self.sub_episode_length
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": task_env.metadata.get("render_fps", 30)}

        self.action_space = task_env.action_space
        self._reward_bounds = getattr(task_env, "reward_bounds", (-np.inf, np.inf))
        self.observation_space = _augmented_space(task_env.observation_space, self._reward_bounds)
        self._vector_obs = isinstance(self.observation_space, spaces.Box)
        self._image_obs = isinstance(task_env.observation_space, spaces.Box) and not self._vector_obs

        self._t = 0
        self._sub_episode = 0
        self._sub_t = 0
        self._returns = np.zeros(self.num_sub_episodes, dtype=np.float64)
        self._lengths = np.zeros(self.num_sub_episodes, dtype=np.int64)

    # -- task hook, exposed on the unwrapped env ---------------------------------
    @property
    def task(self) -> TaskT:
        """The task of the current meta-episode."""
        return self.task_env.task

    def sample_tasks(self, n: int) -> list[TaskT]:
        """Draw ``n`` tasks from the task distribution (uses this env's ``np_random``)."""
        self.task_env.np_random = self.np_random
        return self.task_env.sample_tasks(n)

    # -- Gymnasium API -----------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # One random stream for everything (tasks, initial states, noise): the
        # task env draws from the generator that reset(seed=...) just seeded.
        self.task_env.np_random = self.np_random
        options = dict(options or {})
        task = options.pop("task", None)
        if task is None:
            task = self.task_env.sample_tasks(1)[0]
        self.task_env.set_task(task)
        obs, info = self.task_env.reset(options=options or None)
        self._t = 0
        self._sub_episode = 0
        self._sub_t = 0
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return self._augment(obs, 0.0), {**info, "sub_episode": 0}

    def step(self, action):
        action = check_action(self.action_space, action)
        obs, reward, terminated, truncated, info = self.task_env.step(action)
        reward = float(reward)
        k = self._sub_episode
        self._t += 1
        self._sub_t += 1
        self._returns[k] += reward
        self._lengths[k] += 1

        sub_episode_end = bool(terminated or truncated or self._sub_t >= self.sub_episode_length)
        info = {**info, "sub_episode": k, "sub_episode_end": sub_episode_end}
        meta_terminated = meta_truncated = False
        if sub_episode_end:
            if k == self.num_sub_episodes - 1:
                meta_terminated = bool(terminated)
                meta_truncated = not meta_terminated
                info["sub_episode_returns"] = self._returns.tolist()
                info["sub_episode_lengths"] = self._lengths.tolist()
            else:
                self._sub_episode += 1
                self._sub_t = 0
                obs, _ = self.task_env.reset()
        return self._augment(obs, reward), reward, meta_terminated, meta_truncated, info

    # -- snapshots (exact resume of a killed training run) ----------------------------
    def get_state(self) -> dict[str, Any]:
        """A picklable snapshot of the meta-episode in progress: counters, random generator, task env.

        ``env.set_state(snapshot)`` on a fresh env of the same ID (after one
        ``reset``) continues the meta-episode exactly: same observations,
        rewards and future tasks for the same actions.
        """
        return {
            "t": self._t,
            "sub_episode": self._sub_episode,
            "sub_t": self._sub_t,
            "returns": self._returns.copy(),
            "lengths": self._lengths.copy(),
            "rng": copy.deepcopy(self.np_random.bit_generator.state),
            "task_env": self.task_env.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue the meta-episode captured by :meth:`get_state` (call ``reset`` once before)."""
        if self._np_random is None:
            raise RuntimeError("set_state() needs a reset() first (the env's simulator and generator must exist).")
        self._t, self._sub_episode, self._sub_t = state["t"], state["sub_episode"], state["sub_t"]
        self._returns[:] = state["returns"]
        self._lengths[:] = state["lengths"]
        self.np_random.bit_generator.state = copy.deepcopy(state["rng"])
        self.task_env.np_random = self.np_random
        self.task_env.set_state(state["task_env"])

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without render_mode; pass render_mode='rgb_array' to make().")
            return None
        return self.task_env.render()

    def close(self) -> None:
        self.task_env.close()
        super().close()

    # -- helpers -----------------------------------------------------------------
    def _augment(self, obs: Any, prev_reward: SupportsFloat) -> Any:
        time = self._t / self.horizon
        # the observed copy of the reward stays inside reward_bounds (the reward itself is not clipped)
        prev_reward = min(max(float(prev_reward), self._reward_bounds[0]), self._reward_bounds[1])
        if self._vector_obs:
            out = np.empty(self.observation_space.shape or (), dtype=np.float32)
            out[:-2] = obs
            out[-2] = prev_reward
            out[-1] = time
            return out
        reward_time = np.array([prev_reward, time], dtype=np.float32)
        if self._image_obs:
            return {IMAGE_KEY: obs, REWARD_TIME_KEY: reward_time}
        return {**obs, REWARD_TIME_KEY: reward_time}

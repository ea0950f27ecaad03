"""Replay of whole meta-episodes (paper Sec. 3.3: "sampling full meta-episodes").

Each stored meta-episode is one sequence of ``L = steps + 1`` entries; entry
``t`` holds what the world model sees at time t (Dreamer's convention):

* ``obs[t]``: the observation o_t (o_0 from reset, the terminal/truncation
  observation last);
* ``action[t]``: the action that led to o_t (zeros at t = 0);
* ``reward[t]``: the reward received on arriving at o_t (0 at t = 0);
* ``terminated[t]``: o_t is a real terminal state (continue target 0).

MAMBA samples batches of whole meta-episodes from step 0, cut to the current
prefix H' (:meth:`MetaEpisodeBuffer.sample_prefixes`); the Dreamer presets
sample fixed-length windows from random starts (:meth:`sample_windows`).
Observations keep their native dtype (uint8 images stay uint8). Capacity is in
stored entries; the oldest meta-episodes are dropped first. :meth:`to_arrays` /
:meth:`from_arrays` turn the buffer into plain arrays and back (the pickle-free
``.npz`` replay file of :mod:`sb3_mamba.safe_load`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

Obs = Any  # np.ndarray or dict[str, np.ndarray]


def _map(fn: Callable[[np.ndarray], np.ndarray], obs: Obs) -> Obs:
    return {key: fn(value) for key, value in obs.items()} if isinstance(obs, dict) else fn(obs)


def _nbytes(obs: Obs) -> int:
    return sum(v.nbytes for v in obs.values()) if isinstance(obs, dict) else obs.nbytes


def _stack_entries(entries: list[tuple]) -> dict[str, Any]:
    """A meta-episode's entries ``(obs, action, reward, terminated)`` as one array per field, time first."""
    observations = [e[0] for e in entries]
    if isinstance(observations[0], dict):
        obs = {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    else:
        obs = np.stack(observations)
    return {
        "obs": obs,
        "action": np.stack([e[1] for e in entries]),
        "reward": np.array([e[2] for e in entries], dtype=np.float32),
        "terminated": np.array([e[3] for e in entries], dtype=bool),
    }


@dataclass
class MetaEpisodeBatch:
    """A batch of sequences, time-major inside each sequence: every field is ``(B, L, ...)``."""

    obs: Obs
    action: np.ndarray  # (B, L, A) float32 (one-hot for Discrete)
    reward: np.ndarray  # (B, L) float32
    terminated: np.ndarray  # (B, L) bool
    is_first: np.ndarray  # (B, L) bool: the RSSM starts from its initial state here
    mask: np.ndarray  # (B, L) bool: False on padding past the end of a shorter meta-episode


class MetaEpisodeBuffer:
    """Stores complete meta-episodes from ``n_envs`` parallel envs.

    :param capacity: most entries kept (reference: 1e6); the oldest meta-episodes are dropped first.
    :param observation_space: a ``Box`` or a ``Dict`` of ``Box`` spaces.
    :param action_space: ``Box`` (stored as float32) or ``Discrete`` (stored as one-hot float32).
    :param n_envs: number of parallel envs feeding :meth:`add`.
    """

    def __init__(self, capacity: int, observation_space: spaces.Space, action_space: spaces.Space, n_envs: int = 1):
        if capacity < 2:
            raise ValueError(f"buffer capacity must be >= 2 entries, got {capacity}.")
        if isinstance(action_space, spaces.Discrete):
            self.action_dim = int(action_space.n)
        elif isinstance(action_space, spaces.Box):
            self.action_dim = int(np.prod(action_space.shape))
        else:
            raise ValueError(f"Unsupported action space {action_space}: use Box or Discrete.")
        self.capacity = int(capacity)
        self.observation_space = observation_space
        self.action_space = action_space
        self.n_envs = n_envs
        self.episodes: deque[dict[str, Any]] = deque()
        self.num_entries = 0
        self.num_episodes_added = 0
        self._open: list[list[tuple] | None] = [None] * n_envs  # in-progress meta-episode per env

    # -- writing ---------------------------------------------------------------
    def _action_vector(self, action: Any) -> np.ndarray:
        """One env's action as the vector the world model consumes (A,).

        Discrete: a one-hot vector, or an index that is turned into one. Box: the actor's
        action in [-1, 1] (what the RSSM is filtered and imagined with), not the env's units.
        """
        if isinstance(self.action_space, spaces.Discrete) and np.ndim(action) == 0:
            one_hot = np.zeros(self.action_dim, dtype=np.float32)
            one_hot[int(action) - int(self.action_space.start)] = 1.0
            return one_hot
        return np.asarray(action, dtype=np.float32).reshape(self.action_dim)

    def add(
        self, obs: Obs, next_obs: Obs, action: np.ndarray, reward: np.ndarray, terminated: np.ndarray, done: np.ndarray
    ) -> None:
        """Record one vectorised step of all ``n_envs`` envs.

        ``obs`` is what each env showed before acting; ``next_obs`` what it showed
        after, with the *final* observation of a finished meta-episode (a VecEnv's
        ``info["terminal_observation"]``) in place of the next reset's. A
        meta-episode is stored once its env reports ``done``.
        """
        for i in range(self.n_envs):
            if self._open[i] is None:
                zero_action = np.zeros(self.action_dim, dtype=np.float32)
                # np.array copies: VecEnvs reuse their observation arrays
                self._open[i] = [(_map(lambda v, i=i: np.array(v[i]), obs), zero_action, 0.0, False)]
            self._open[i].append(
                (
                    _map(lambda v, i=i: np.array(v[i]), next_obs),
                    self._action_vector(action[i]),
                    float(reward[i]),
                    bool(terminated[i]),
                )
            )
            if done[i]:
                self._store(self._open[i])
                self._open[i] = None

    def discard_open(self) -> None:
        """Drop the unfinished meta-episodes (their envs were reset, so they will never finish)."""
        self._open = [None] * self.n_envs

    def _store(self, entries: list[tuple]) -> None:
        self.episodes.append(_stack_entries(entries))
        self.num_entries += len(entries)
        self.num_episodes_added += 1
        while self.num_entries > self.capacity and len(self.episodes) > 1:
            self.num_entries -= len(self.episodes.popleft()["reward"])

    # -- plain arrays (pickle-free saving) -------------------------------------
    def _fields(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Per-step array name -> (shape of one step, dtype); a ``Dict`` observation's keys become ``obs/<key>``.

        Observations keep the dtype the env gave them; theirs here (the space's) is that of an empty array.
        """
        if isinstance(self.observation_space, spaces.Dict):
            obs = {f"obs/{key}": space for key, space in self.observation_space.spaces.items()}
        else:
            obs = {"obs": self.observation_space}
        return {
            **{name: (space.shape, space.dtype) for name, space in obs.items()},
            "action": ((self.action_dim,), np.dtype(np.float32)),
            "reward": ((), np.dtype(np.float32)),
            "terminated": ((), np.dtype(bool)),
        }

    def _join(self, prefix: str, episodes: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """``episodes`` joined along time as ``<prefix>/<field>`` arrays, their lengths in ``<prefix>/length``."""
        arrays = {f"{prefix}/length": np.array([len(ep["reward"]) for ep in episodes], dtype=np.int64)}
        for name, (shape, dtype) in self._fields().items():
            key = name.partition("/")[2]  # the Dict key of "obs/<key>"
            parts = [ep["obs"][key] if key else ep[name] for ep in episodes]
            arrays[f"{prefix}/{name}"] = np.concatenate(parts) if parts else np.zeros((0, *shape), dtype)
        return arrays

    def _split(self, prefix: str, arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Invert :meth:`_join`: one dict of arrays per meta-episode; ValueError if the arrays do not fit."""
        lengths = arrays[f"{prefix}/length"]
        if lengths.ndim != 1 or lengths.dtype.kind not in "iu" or (lengths < 1).any():
            raise ValueError(f"'{prefix}/length' must be a list of positive integers, got {lengths!r}.")
        total = int(lengths.sum())
        episodes: list[dict[str, Any]] = [{"obs": {}} for _ in lengths]  # (a Box observation replaces the dict)
        for name, (shape, dtype) in self._fields().items():
            array = arrays[f"{prefix}/{name}"]
            if array.shape != (total, *shape):
                raise ValueError(f"'{prefix}/{name}' has shape {array.shape}, expected {(total, *shape)}.")
            dtype_ok = array.dtype.kind in "biuf" if name.startswith("obs") else array.dtype == dtype
            if not dtype_ok:
                raise ValueError(f"'{prefix}/{name}' has dtype {array.dtype}, expected {dtype}.")
            key = name.partition("/")[2]
            # (no meta-episodes: no parts; np.split would return the empty array as one)
            parts = np.split(array, np.cumsum(lengths)[:-1]) if len(lengths) else []
            for episode, part in zip(episodes, parts, strict=True):
                if key:
                    episode["obs"][key] = part.copy()
                else:
                    episode[name] = part.copy()
        return episodes

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The buffer as plain arrays (no Python objects), for ``np.savez``; :meth:`from_arrays` inverts it.

        The stored meta-episodes are joined along time into ``episodes/obs``, ``episodes/action``,
        ``episodes/reward`` and ``episodes/terminated`` (``episodes/length`` splits them again; a
        ``Dict`` observation's keys become ``episodes/obs/<key>``); the unfinished meta-episodes
        likewise into ``open/...``, with the env each belongs to in ``open/env`` (their rewards at
        float32, the precision they are stored with once finished). The capacity, ``n_envs`` and
        ``num_episodes_added`` are 0-d arrays.
        """
        unfinished = {i: _stack_entries(entries) for i, entries in enumerate(self._open) if entries}
        return {
            "capacity": np.array(self.capacity),
            "n_envs": np.array(self.n_envs),
            "num_episodes_added": np.array(self.num_episodes_added),
            **self._join("episodes", list(self.episodes)),
            **self._join("open", list(unfinished.values())),
            "open/env": np.array(list(unfinished), dtype=np.int64),
        }

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], observation_space: spaces.Space, action_space: spaces.Space
    ) -> MetaEpisodeBuffer:
        """Rebuild the buffer that :meth:`to_arrays` described.

        :param arrays: the arrays of :meth:`to_arrays` (further names are ignored).
        :param observation_space: the observation space the buffer was recorded with.
        :param action_space: the action space the buffer was recorded with.
        :raises KeyError: an array is missing.
        :raises ValueError: the arrays do not fit together or the spaces.
        """
        counters = {}
        for name in ("capacity", "n_envs", "num_episodes_added"):
            value = arrays[name]
            if value.ndim != 0 or value.dtype.kind not in "iu" or value < 0:
                raise ValueError(f"'{name}' must be a non-negative integer, got {value!r}.")
            counters[name] = int(value)
        buffer = cls(counters["capacity"], observation_space, action_space, n_envs=counters["n_envs"])
        for episode in buffer._split("episodes", arrays):
            buffer.episodes.append(episode)
            buffer.num_entries += len(episode["reward"])
        buffer.num_episodes_added = counters["num_episodes_added"]
        envs = arrays["open/env"]
        unfinished = buffer._split("open", arrays)
        if (
            envs.shape != (len(unfinished),)
            or envs.dtype.kind not in "iu"
            or len(set(envs.tolist())) != len(envs)
            or not ((0 <= envs) & (envs < buffer.n_envs)).all()
        ):
            raise ValueError(f"'open/env' must name {len(unfinished)} distinct envs of {buffer.n_envs}, got {envs!r}.")
        for env, episode in zip(envs.tolist(), unfinished, strict=True):
            buffer._open[env] = [
                (
                    _map(lambda v, t=t: v[t], episode["obs"]),
                    episode["action"][t],
                    float(episode["reward"][t]),
                    bool(episode["terminated"][t]),
                )
                for t in range(len(episode["reward"]))
            ]
        return buffer

    # -- reading ---------------------------------------------------------------
    def __len__(self) -> int:
        """Number of stored (complete) meta-episodes."""
        return len(self.episodes)

    @property
    def nbytes(self) -> int:
        """Bytes of array data held: stored meta-episodes plus unfinished ones (``train/buffer_bytes``)."""
        stored = sum(
            _nbytes(ep["obs"]) + ep["action"].nbytes + ep["reward"].nbytes + ep["terminated"].nbytes
            for ep in self.episodes
        )
        # an unfinished entry holds its observation and action arrays (reward and flag are Python scalars;
        # counted at their stored size)
        unfinished = sum(_nbytes(e[0]) + e[1].nbytes + 5 for entries in self._open if entries for e in entries)
        return stored + unfinished

    def gather(self, picks: list[tuple[int, int]], length: int) -> MetaEpisodeBatch:
        """Copy ``length`` entries from (episode index, start) pairs into one padded batch."""
        batch_size = len(picks)
        first = self.episodes[picks[0][0]]
        obs = _map(lambda v: np.zeros((batch_size, length, *v.shape[1:]), dtype=v.dtype), first["obs"])
        action = np.zeros((batch_size, length, self.action_dim), dtype=np.float32)
        reward = np.zeros((batch_size, length), dtype=np.float32)
        terminated = np.zeros((batch_size, length), dtype=bool)
        mask = np.zeros((batch_size, length), dtype=bool)
        is_first = np.zeros((batch_size, length), dtype=bool)
        is_first[:, 0] = True
        for b, (index, start) in enumerate(picks):
            episode = self.episodes[index]
            n = min(length, len(episode["reward"]) - start)
            if isinstance(obs, dict):
                for key in obs:
                    obs[key][b, :n] = episode["obs"][key][start : start + n]
            else:
                obs[b, :n] = episode["obs"][start : start + n]
            action[b, :n] = episode["action"][start : start + n]
            reward[b, :n] = episode["reward"][start : start + n]
            terminated[b, :n] = episode["terminated"][start : start + n]
            mask[b, :n] = True
        return MetaEpisodeBatch(obs, action, reward, terminated, is_first, mask)

    def sample_prefixes(self, batch_size: int, length: int, rng: np.random.Generator) -> MetaEpisodeBatch:
        """``batch_size`` meta-episodes (with replacement), each from step 0, cut to ``length`` entries.

        Meta-episodes shorter than ``length`` are zero-padded (``mask`` False there).
        """
        return self.gather(self.draw_prefixes(batch_size, length, rng), length)

    def draw_prefixes(self, batch_size: int, length: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        """The (episode index, start) pairs of :meth:`sample_prefixes`, for :meth:`gather`."""
        self._check_sample(batch_size, length)
        return [(int(i), 0) for i in rng.integers(len(self.episodes), size=batch_size)]

    def sample_windows(self, batch_size: int, length: int, rng: np.random.Generator) -> MetaEpisodeBatch:
        """``batch_size`` windows of ``length`` entries from uniformly random starts (Dreamer's sampling).

        The window's first entry is marked ``is_first``: the RSSM starts there
        from its initial state, without the history before the window.
        """
        return self.gather(self.draw_windows(batch_size, length, rng), length)

    def draw_windows(self, batch_size: int, length: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        """The (episode index, start) pairs of :meth:`sample_windows`, for :meth:`gather`."""
        self._check_sample(batch_size, length)
        picks = []
        for i in rng.integers(len(self.episodes), size=batch_size):
            episode_length = len(self.episodes[int(i)]["reward"])
            start = int(rng.integers(max(episode_length - length, 0) + 1))
            picks.append((int(i), start))
        return picks

    def _check_sample(self, batch_size: int, length: int) -> None:
        if not self.episodes:
            raise RuntimeError("The replay buffer holds no complete meta-episode yet.")
        if batch_size < 1 or length < 1:
            raise ValueError(f"batch_size and length must be >= 1, got {batch_size} and {length}.")

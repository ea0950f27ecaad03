"""MAMBA: DreamerV3 adapted to meta-RL (Rimon, Jurgenson et al., ICLR 2024), as an SB3 algorithm.

Data path: VecEnv -> :class:`~sb3_mamba.buffers.MetaEpisodeBuffer` (whole
meta-episodes) -> :class:`~sb3_mamba.world_model.WorldModel` (RSSM unrolled
over the prefix H', losses at L_wm indices) -> imagination from L_ac
posterior states -> :class:`~sb3_mamba.behavior.ActorCritic`.
"""

from __future__ import annotations

import io
import pathlib
import time
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import load_from_pkl, save_to_pkl
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import FloatSchedule, safe_mean, update_learning_rate

from sb3_mamba import checkpoints, safe_load
from sb3_mamba.behavior import ImaginationStarts
from sb3_mamba.buffers import MetaEpisodeBuffer
from sb3_mamba.checkpoints import CheckpointError
from sb3_mamba.cpu import tune_allocator
from sb3_mamba.device_replay import DeviceReplay
from sb3_mamba.kernels import select_backend
from sb3_mamba.policies import RSSMPolicy
from sb3_mamba.presets import resolve_preset
from sb3_mamba.schedules import WorldModelHorizonSchedule
from sb3_mamba.world_model import sample_valid_indices, split_observation_space

SelfMAMBA = TypeVar("SelfMAMBA", bound="MAMBA")


class NonFiniteError(RuntimeError):
    """NaN/Inf in an observation, reward, loss or gradient: training stops before anything is stored or updated."""


class NonFiniteLossError(NonFiniteError):
    """A loss or gradient became NaN/Inf: training stops before the parameters are corrupted."""


class MAMBA(BaseAlgorithm):
    """MAMBA (and, through ``preset``, the paper's Dreamer-Tune / Dreamer-Vanilla baselines).

    Arguments left at ``None`` take the preset's value (listed for ``preset="mamba"``).

    :param policy: ``"RSSMPolicy"`` (aliases ``"MlpPolicy"``, ``"MultiInputPolicy"``, ``"CnnPolicy"``).
    :param env: an env ID, a Gymnasium env or a VecEnv (several envs welcome). One Gymnasium
        episode must be one meta-episode (see :mod:`sb3_mamba_envs`). Under ``VecNormalize`` the
        policy acts on the normalised observations, while the replay keeps the raw observations and
        rewards and normalises sampled batches with the statistics current then, as SB3's
        off-policy algorithms do.
    :param preset: ``"mamba"`` (default), ``"dreamer_tune"`` or ``"dreamer_vanilla"``
        (see :mod:`sb3_mamba.presets`).
    :param learning_rate: world-model Adam learning rate (1e-4; reference 2e-4 for Reacher/Panda/Humanoid),
        or a schedule (a callable of the progress remaining, 1 -> 0, as in SB3; the zoo's ``lin_1e-4``).
    :param actor_lr: actor learning rate (3e-5), or a schedule.
    :param critic_lr: critic learning rate (3e-5), or a schedule.
    :param buffer_size: replay capacity in stored steps (1e6); the oldest meta-episodes are dropped first.
    :param prefill_episodes: meta-episodes (over all envs) collected with a uniform random policy before
        the first update (25 in the reference, counted over all envs).
    :param batch_size: sequences (meta-episodes or windows) per update (16).
    :param train_ratio: gradient updates per environment step (0.05). The reference's
        ``train_ratio`` counts updates per env step *times K* (Rooms 0.1 with K = 2 is 0.05 here).
    :param sampling: ``"prefix"``: whole meta-episodes from step 0, cut to H' (MAMBA);
        ``"window"``: ``batch_length`` steps from a random start (Dreamer).
    :param batch_length: window length for ``sampling="window"`` (64).
    :param wm_indices: L_wm, world-model prediction indices per sequence (64); None: every step.
    :param ac_indices: L_ac, imagination starts per sequence (512); None: every step.
    :param wm_horizon_initial: H' at the start of training (50); None or >= H: no schedule.
    :param wm_horizon_steps: N_WM, real env steps until H' = H (2.5e6: the paper's "5e6" counted
        by the reference's logger, which counts every training env step twice; Humanoid-Dir 7.5e6).
    :param meta_episode_length: H; read from the env (``horizon`` of our envs) when None.
    :param imag_horizon: imagined transitions, i.e. lambda-return targets per start (9). The
        reference's ``imag_horizon: h`` counts the start state too and trains on h - 1 targets: its
        10 (MAMBA's default; PRN-Wind, EscapeRoom, Reacher) is 9 here, its 2 (Rooms, PRN) is 1,
        Dreamer-Vanilla's 15 is 14.
    :param discount: gamma (0.997).
    :param return_lambda: lambda of the lambda-returns (0.95).
    :param ent_coef: actor entropy scale (3e-4).
    :param free_bits: KL free nats per step (1.0).
    :param dyn_scale: scale of KL(sg(post) || prior) (0.5).
    :param rep_scale: scale of KL(post || sg(prior)) (0.1).
    :param slow_critic_fraction: EMA fraction of the slow critic per update (0.02).
    :param slow_critic_reg: weight of the critic's regulariser towards the slow critic (1.0).
    :param model_grad_clip: world-model gradient norm clip (1000).
    :param actor_critic_grad_clip: actor and critic gradient norm clip (100).
    :param units: heads/actor/critic width (128; Dreamer-Vanilla 512).
    :param dyn_deter: RSSM deterministic size (512).
    :param dyn_stoch: RSSM categorical variables (16; Dreamer-Vanilla 32).
    :param dyn_discrete: classes per variable (16; Dreamer-Vanilla 32).
    :param dyn_hidden: MLP width inside the RSSM cell (64; Dreamer-Vanilla 512).
    :param precision: ``"float32"`` (default) or ``"bfloat16"``: autocast the update's matmuls to
        bfloat16 (norms, distributions and losses stay float32; parameters and optimisers float32),
        as DreamerV3 computes. Pays on GPUs and on CPUs with AVX512-BF16/AMX (see benchmarks/).
    :param policy_kwargs: further :class:`RSSMPolicy` arguments (layers, encoder sizes, unimix, eps).
    :param stats_window_size: episodes averaged by the ``rollout/`` logs (100), as in SB3.
    :param tensorboard_log, verbose, seed, device: as in SB3. On CPU, the process keeps freed memory in
        its heap for the update's large temporaries (:mod:`sb3_mamba.cpu`; ``SB3_MAMBA_TUNE_MALLOC=0`` opts out).
    :param backend: how the update computes (:mod:`sb3_mamba.kernels`): ``"eager"`` the modules' own
        math, ``"native"`` the fused unroll and imagination (C kernels built on first use with the
        system C compiler on CPU; ``SB3_MAMBA_NATIVE=0`` keeps them to ATen ops), ``"compile"``
        ``torch.compile`` of the eager steps, ``"auto"`` (default) the fastest measured. All compute
        the same update (``tests/test_kernels.py``); logged at ``verbose >= 1``.
    :param replay_on_device: keep a copy of the stored meta-episodes in the device's memory and gather
        each batch there (:mod:`sb3_mamba.device_replay`), so that no batch is copied from the host per
        update; the same batches either way. None (default): on every device but the CPU. Under
        ``VecNormalize`` batches are gathered and normalised on the host, with SB3's statistics.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "RSSMPolicy": RSSMPolicy,
        "MlpPolicy": RSSMPolicy,
        "MultiInputPolicy": RSSMPolicy,
        "CnnPolicy": RSSMPolicy,
    }
    policy: RSSMPolicy

    def __init__(
        self,
        policy: str | type[RSSMPolicy],
        env: GymEnv | str | None,
        preset: str = "mamba",
        learning_rate: float | Schedule = 1e-4,
        actor_lr: float | Schedule = 3e-5,
        critic_lr: float | Schedule = 3e-5,
        buffer_size: int = 1_000_000,
        prefill_episodes: int = 25,
        batch_size: int = 16,
        train_ratio: float = 0.05,
        sampling: str | None = None,
        batch_length: int = 64,
        wm_indices: int | None = None,
        ac_indices: int | None = None,
        wm_horizon_initial: int | None = None,
        wm_horizon_steps: int = 2_500_000,
        meta_episode_length: int | None = None,
        imag_horizon: int | None = None,
        discount: float = 0.997,
        return_lambda: float = 0.95,
        ent_coef: float = 3e-4,
        free_bits: float = 1.0,
        dyn_scale: float = 0.5,
        rep_scale: float = 0.1,
        slow_critic_fraction: float = 0.02,
        slow_critic_reg: float = 1.0,
        model_grad_clip: float = 1000.0,
        actor_critic_grad_clip: float = 100.0,
        units: int | None = None,
        dyn_deter: int | None = None,
        dyn_stoch: int | None = None,
        dyn_discrete: int | None = None,
        dyn_hidden: int | None = None,
        precision: str = "float32",
        backend: str = "auto",
        replay_on_device: bool | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            support_multi_env=True,
            seed=seed,
            supported_action_spaces=None,  # checked below with a clear error
        )
        settings = resolve_preset(
            preset,
            {
                "sampling": sampling,
                "wm_indices": wm_indices,
                "ac_indices": ac_indices,
                "wm_horizon_initial": wm_horizon_initial,
                "imag_horizon": imag_horizon,
                "units": units,
                "dyn_deter": dyn_deter,
                "dyn_stoch": dyn_stoch,
                "dyn_discrete": dyn_discrete,
                "dyn_hidden": dyn_hidden,
            },
        )
        self.preset = preset
        self.actor_lr = actor_lr
        self.critic_lr = critic_lr
        self.buffer_size = buffer_size
        self.prefill_episodes = prefill_episodes
        self.batch_size = batch_size
        self.train_ratio = train_ratio
        self.sampling = settings["sampling"]
        self.batch_length = batch_length
        self.wm_indices = settings["wm_indices"]
        self.ac_indices = settings["ac_indices"]
        self.wm_horizon_initial = settings["wm_horizon_initial"]
        # (YAML gives 1.5e7 as a float)
        self.wm_horizon_steps = int(wm_horizon_steps) if isinstance(wm_horizon_steps, float) else wm_horizon_steps
        self.meta_episode_length = meta_episode_length
        self.imag_horizon = settings["imag_horizon"]
        self.discount = discount
        self.return_lambda = return_lambda
        self.ent_coef = ent_coef
        self.free_bits = free_bits
        self.dyn_scale = dyn_scale
        self.rep_scale = rep_scale
        self.slow_critic_fraction = slow_critic_fraction
        self.slow_critic_reg = slow_critic_reg
        self.model_grad_clip = model_grad_clip
        self.actor_critic_grad_clip = actor_critic_grad_clip
        self.precision = precision
        self.backend = backend
        self.replay_on_device = replay_on_device
        self.network_sizes = {k: settings[k] for k in ("units", "dyn_deter", "dyn_stoch", "dyn_discrete", "dyn_hidden")}
        self._n_updates = 0
        self._train_credit = 0.0
        #: env steps over the model's whole life (not reset by ``learn(reset_num_timesteps=True)``):
        #: drives the world-model horizon schedule, so continuing a loaded model keeps its H'
        self._lifetime_timesteps = 0
        #: when True, train() records wall time of its world-model and actor-critic halves
        #: in ``update_timings`` (synchronising the GPU, so only for benchmarks)
        self.profile_updates = False
        self.update_timings: dict[str, list[float]] = {"world_model": [], "actor_critic": []}
        if _init_setup_model:
            self._setup_model()

    # -- set-up ----------------------------------------------------------------------
    def _validate(self) -> None:
        if not isinstance(self.action_space, (spaces.Box, spaces.Discrete)):
            raise ValueError(f"MAMBA supports Box and Discrete action spaces, got {self.action_space}.")
        if isinstance(self.action_space, spaces.Box) and (
            not np.all(np.isfinite(self.action_space.low)) or not np.all(np.isfinite(self.action_space.high))
        ):
            raise ValueError(f"Box action spaces must have finite bounds, got {self.action_space}.")
        split_observation_space(self.observation_space)  # raises ValueError for unsupported observations
        positive_ints = {
            "buffer_size": self.buffer_size,
            "batch_size": self.batch_size,
            "batch_length": self.batch_length,
            "imag_horizon": self.imag_horizon,
            "meta_episode_length": self.meta_episode_length,
            **{k: v for k, v in self.network_sizes.items()},
        }
        for name in ("wm_indices", "ac_indices", "wm_horizon_initial"):
            if getattr(self, name) is not None:
                positive_ints[name] = getattr(self, name)
        for name, value in positive_ints.items():
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("learning_rate", "actor_lr", "critic_lr"):
            value = getattr(self, name)
            if not callable(value) and (not isinstance(value, (int, float, np.floating)) or isinstance(value, bool)):
                raise ValueError(
                    f"{name} must be a number or a schedule (a callable of the progress remaining), got {value!r}."
                )
        self._validate_settings()

    def _validate_settings(self) -> None:
        """The numeric settings' ranges and how they fit the meta-episode length."""
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {self.precision!r}.")
        if self.sampling not in ("prefix", "window"):
            raise ValueError(f"sampling must be 'prefix' or 'window', got {self.sampling!r}.")
        if self.prefill_episodes < 0:
            raise ValueError(f"prefill_episodes must be >= 0, got {self.prefill_episodes}.")
        checks = {
            "train_ratio": self.train_ratio > 0,
            "discount": 0 < self.discount <= 1,
            "return_lambda": 0 <= self.return_lambda <= 1,
            "ent_coef": self.ent_coef >= 0,
            "free_bits": self.free_bits >= 0,
            "dyn_scale": self.dyn_scale >= 0,
            "rep_scale": self.rep_scale >= 0,
            # a learning rate of 0 is allowed: rl_zoo3's enjoy loads models with learning_rate=0
            "slow_critic_fraction": 0 < self.slow_critic_fraction <= 1,
            **{
                name: FloatSchedule(getattr(self, name))(1.0) >= 0
                for name in ("learning_rate", "actor_lr", "critic_lr")
            },
            "model_grad_clip": self.model_grad_clip > 0,
            "actor_critic_grad_clip": self.actor_critic_grad_clip > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"Invalid {name}={getattr(self, name)!r}.")
        if self.buffer_size < self.meta_episode_length + 1:
            raise ValueError(
                f"buffer_size={self.buffer_size} cannot hold one meta-episode of {self.meta_episode_length} steps."
            )
        entries = self.meta_episode_length + 1
        # (L_wm and L_ac indices are drawn with replacement, as in the reference: more than H' is legal)
        if self.sampling == "window" and self.batch_length > entries:
            raise ValueError(
                f"batch_length={self.batch_length} is longer than a meta-episode ({entries} steps with H="
                f"{self.meta_episode_length}): windows would be mostly padding."
            )
        if self.sampling == "prefix" and self.wm_horizon_initial is not None:
            if self.wm_horizon_initial < self.meta_episode_length and not (
                isinstance(self.wm_horizon_steps, (int, float, np.number)) and self.wm_horizon_steps > 0
            ):
                raise ValueError(
                    f"wm_horizon_steps={self.wm_horizon_steps!r} cannot grow H' from {self.wm_horizon_initial} "
                    f"to H={self.meta_episode_length}: it must be a positive number of env steps."
                )

    def _infer_meta_episode_length(self) -> int:
        if self.meta_episode_length is not None:
            return self.meta_episode_length
        if self.env is not None:
            try:
                return int(self.env.get_attr("horizon")[0])
            except AttributeError:
                spec_steps = self.env.get_attr("spec")[0]
                if spec_steps is not None and spec_steps.max_episode_steps:
                    warnings.warn(
                        f"The env ({spec_steps.id}) has no `horizon` attribute: it does not look like a meta-RL env "
                        "(sb3_mamba_envs.MetaEpisodeEnv), so each of its episodes is treated as one meta-episode "
                        f"of H = {spec_steps.max_episode_steps} steps (its TimeLimit). Pass meta_episode_length=H "
                        "to silence this.",
                        stacklevel=3,
                    )
                    return int(spec_steps.max_episode_steps)
        raise ValueError(
            "Cannot read the meta-episode length H from the env (no `horizon` attribute or TimeLimit): "
            "pass meta_episode_length=H."
        )

    def _setup_model(self) -> None:
        self.meta_episode_length = self._infer_meta_episode_length()
        self._validate()
        self.set_random_seed(self.seed)
        if getattr(self, "_rng", None) is None:  # a loaded model keeps its replay-sampling generator
            self._rng = np.random.default_rng(self.seed)
        self._setup_lr_schedule()
        self.actor_lr_schedule = FloatSchedule(self.actor_lr)
        self.critic_lr_schedule = FloatSchedule(self.critic_lr)
        policy_kwargs = {
            **self.network_sizes,
            "model_lr": self.lr_schedule(1.0),
            "actor_lr": self.actor_lr_schedule(1.0),
            "critic_lr": self.critic_lr_schedule(1.0),
            **self.policy_kwargs,
        }
        self.policy = self.policy_class(self.observation_space, self.action_space, **policy_kwargs).to(self.device)
        self.kernels = select_backend(self.backend, self.device, self.policy.world_model.rssm, self.batch_size)
        if self.kernels.prepare is not None:
            self.kernels.prepare(self.policy)
        if self.verbose >= 1:
            print(f"MAMBA backend: {self.kernels.name} ({self.kernels.detail})")
        if self.device.type == "cpu":
            tune_allocator()  # keep the update's large temporaries in the heap (see sb3_mamba.cpu)
        self.replay_buffer = MetaEpisodeBuffer(
            self.buffer_size, self.observation_space, self.action_space, n_envs=self.n_envs
        )
        on_device = self.device.type != "cpu" if self.replay_on_device is None else self.replay_on_device
        self.device_replay = DeviceReplay(self.device) if on_device else None
        initial = self.wm_horizon_initial if self.sampling == "prefix" and self.wm_horizon_initial else None
        self.wm_horizon_schedule = WorldModelHorizonSchedule(
            initial if initial is not None else self.meta_episode_length,
            self.meta_episode_length,
            self.wm_horizon_steps,
        )
        self._rollout_state = None
        if getattr(self, "_sub_episode_returns", None) is None:  # a loaded model keeps its statistics
            self._sub_episode_returns: deque[list[float]] = deque(maxlen=100)

    # -- data collection -----------------------------------------------------------
    @property
    def gamma(self) -> float:
        """The discount (SB3's name for it, read by e.g. ``HParamCallback``); the same as ``discount``."""
        return self.discount

    @property
    def prefilling(self) -> bool:
        return self.replay_buffer.num_episodes_added < self.prefill_episodes

    def _obs_to_tensor(self, obs: Any) -> Any:
        if isinstance(obs, dict):
            return {k: torch.as_tensor(v, device=self.device) for k, v in obs.items()}
        return torch.as_tensor(obs, device=self.device)

    @torch.no_grad()
    def _collect_step(self, callback: BaseCallback) -> None:
        """One step of every env, stored in the replay buffer."""
        if self.policy.training:  # (a walk over every module: only after train() switched it on)
            self.policy.set_training_mode(False)
        obs = self._last_obs
        starts = torch.as_tensor(self._last_episode_starts, dtype=torch.bool, device=self.device)
        action_vec, state = self.policy.act(self._obs_to_tensor(obs), self._rollout_state, starts)
        if self.prefilling:  # uniform random actions, but keep filtering the RSSM state
            env_actions = np.array([self.action_space.sample() for _ in range(self.n_envs)])
            action_vec = self.policy.from_env_action(env_actions)
            state = (state[0], state[1], action_vec)
        else:
            env_actions = self.policy.to_env_action(action_vec)
        self._rollout_state = state

        new_obs, rewards, dones, infos = self.env.step(env_actions)
        _check_finite_data(new_obs, rewards, infos, dones, self.num_timesteps)
        self.num_timesteps += self.n_envs
        self._lifetime_timesteps += self.n_envs
        callback.update_locals(locals())
        self._update_info_buffer(infos, dones)

        if self._vec_normalize_env is None:
            stored_obs, raw_new_obs, raw_rewards, unnormalize = obs, new_obs, rewards, None
        else:  # the replay keeps raw data, as in SB3's off-policy algorithms; _sample() normalises batches
            stored_obs, raw_new_obs = self._last_original_obs, self._vec_normalize_env.get_original_obs()
            raw_rewards = self._vec_normalize_env.get_original_reward()
            unnormalize = self._vec_normalize_env.unnormalize_obs
        final_obs = _replace_done_obs(raw_new_obs, dones, infos, unnormalize)
        terminated = np.array(
            [d and not info.get("TimeLimit.truncated", False) for d, info in zip(dones, infos, strict=True)]
        )
        # the model's action vectors (one-hot; the actor's [-1, 1] for Box), not the env's units: the
        # world model trains on the scale it is filtered and imagined with
        self.replay_buffer.add(stored_obs, final_obs, action_vec.cpu().numpy(), raw_rewards, terminated, dones)
        for done, info in zip(dones, infos, strict=True):
            if done:
                self._episode_num += 1
                if "sub_episode_returns" in info:
                    self._sub_episode_returns.append(info["sub_episode_returns"])
                if self._log_interval and self._episode_num % self._log_interval == 0:
                    self.dump_logs()
        self._last_obs = new_obs
        if self._vec_normalize_env is not None:
            self._last_original_obs = raw_new_obs
        self._last_episode_starts = dones

    # -- training --------------------------------------------------------------------
    def learn(
        self: SelfMAMBA,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "MAMBA",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfMAMBA:
        """Collect and train for ``total_timesteps`` env steps; logs every ``log_interval`` meta-episodes."""
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        self._log_interval = log_interval
        callback.on_training_start(locals(), globals())
        if self.prefilling:
            # envs step in lock-step: the prefill ends after ceil(missing / n_envs) rounds of H steps each
            missing = self.prefill_episodes - self.replay_buffer.num_episodes_added
            prefill_steps = -(-missing // self.n_envs) * self.meta_episode_length * self.n_envs
            if total_timesteps - self.num_timesteps < prefill_steps:
                warnings.warn(
                    f"learn() stops after {total_timesteps - self.num_timesteps} env steps, before the random prefill "
                    f"of {self.prefill_episodes} meta-episodes (~{prefill_steps} env steps with {self.n_envs} envs) "
                    "is complete: no gradient update will run. Train longer or lower prefill_episodes.",
                    stacklevel=2,
                )
        rollout_open = False
        while self.num_timesteps < total_timesteps:
            if not rollout_open:
                callback.on_rollout_start()
                rollout_open = True
            self._collect_step(callback)
            self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
            if not self.prefilling and len(self.replay_buffer) > 0:
                self._train_credit += self.n_envs * self.train_ratio
                if self._train_credit >= 1.0:
                    steps = int(self._train_credit)
                    self._train_credit -= steps
                    # a rollout is the collection between two rounds of updates, as in SB3's off-policy loop
                    callback.on_rollout_end()
                    rollout_open = False
                    self.train(steps)
            # Callbacks see the step complete (stored and trained on): a checkpoint taken here
            # resumes exactly. (SB3's off-policy loop calls them before storing the transition.)
            if not callback.on_step():
                break
        if rollout_open:
            callback.on_rollout_end()
        callback.on_training_end()
        return self

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        # A model loaded from a checkpoint continues the saved run (envs' meta-episodes, RNGs) when
        # asked to continue; otherwise the envs restart and unfinished meta-episodes are dropped.
        saved_run = self.__dict__.pop("_run_state", None)
        if self.__dict__.pop("_run_state_left_out", False) and not reset_num_timesteps:
            warnings.warn(
                "This model was loaded with safe=True, which leaves out the saved run state (random generators, "
                "the envs' meta-episodes in progress): learn(reset_num_timesteps=False) restarts the envs' "
                "meta-episodes instead of continuing the saved run exactly.",
                stacklevel=3,
            )
        restored = False
        if saved_run is not None and not reset_num_timesteps:
            restored = checkpoints.restore_run_state(self, saved_run)
        if not restored and (reset_num_timesteps or self._last_obs is None):
            self.replay_buffer.discard_open()
            self._rollout_state = None
        return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)

    def wm_horizon(self) -> int:
        """H' for the current number of env steps (logged as ``train/wm_horizon``)."""
        return self.wm_horizon_schedule(self._lifetime_timesteps)

    def _sample(self) -> dict[str, Any]:
        """One update's batch, as the world model sees it, on the device: the fields of
        :class:`~sb3_mamba.buffers.MetaEpisodeBatch` as tensors (``obs`` preprocessed).

        Under VecNormalize the replay holds raw observations and rewards: they are normalised here with
        the current statistics, as SB3's off-policy algorithms sample.
        """
        if self.sampling == "prefix":
            length = self.wm_horizon() + 1
            picks = self.replay_buffer.draw_prefixes(self.batch_size, length, self._rng)
        else:
            length = self.batch_length
            picks = self.replay_buffer.draw_windows(self.batch_size, length, self._rng)
        if self.device_replay is not None and self._vec_normalize_env is None:
            self.device_replay.update(self.replay_buffer)
            tensors = self.device_replay.gather(picks, length)
        else:
            batch = self.replay_buffer.gather(picks, length)
            if self._vec_normalize_env is not None:
                batch.obs = self._vec_normalize_env.normalize_obs(batch.obs)
                batch.reward = self._vec_normalize_env.normalize_reward(batch.reward)
            tensors = {
                k: torch.as_tensor(getattr(batch, k), device=self.device)
                for k in ("action", "reward", "terminated", "is_first", "mask")
            }
            tensors["obs"] = self._obs_to_tensor(batch.obs)
        tensors["obs"] = self.policy.world_model.preprocess(tensors["obs"])
        return tensors

    def _clock(self) -> float:
        if self.profile_updates and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16")

    def train(self, gradient_steps: int) -> None:
        """``gradient_steps`` updates of the world model, actor and critic.

        The updates read nothing back on the host (a GPU runs them without waiting for the host); the
        metrics and the finiteness checks are read once, after the last.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.model_optimizer)
        progress = self._current_progress_remaining
        update_learning_rate(self.policy.actor_optimizer, self.actor_lr_schedule(progress))
        update_learning_rate(self.policy.critic_optimizer, self.critic_lr_schedule(progress))
        self.logger.record("train/actor_lr", self.actor_lr_schedule(progress))
        self.logger.record("train/critic_lr", self.critic_lr_schedule(progress))
        guard = SkipNonFinite(self.device)
        metrics: dict[str, list[torch.Tensor]] = {}
        for _ in range(gradient_steps):
            for key, value in self._update(self._sample(), guard).items():
                metrics.setdefault(key, []).append(value)
        guard.raise_if_skipped(self)
        if metrics:  # (one host read for all of them)
            means = torch.stack([torch.stack(values).float().mean() for values in metrics.values()]).tolist()
            for key, mean in zip(metrics, means, strict=True):
                self.logger.record(f"train/{key}", mean)
        self.logger.record("train/n_updates", self._n_updates)
        self.logger.record("train/wm_horizon", self.wm_horizon())

    def _update(self, batch: dict[str, Any], guard: SkipNonFinite) -> dict[str, torch.Tensor]:
        """One update on ``batch`` (:meth:`_sample`); returns its metrics, still on the device.

        A stage whose losses or gradient norms are not finite, and every stage after it, skips its
        optimiser steps (``guard``).
        """
        wm, ac = self.policy.world_model, self.policy.actor_critic
        tic = self._clock()
        with self._autocast():
            wm_loss, wm_metrics, post = wm.loss(
                batch["obs"],
                batch["action"],
                batch["reward"],
                batch["terminated"],
                batch["is_first"],
                batch["mask"],
                self.wm_indices,
                self.free_bits,
                self.dyn_scale,
                self.rep_scale,
                observe=self.kernels.observe,
                window_outputs_fn=self.kernels.window_outputs,
            )
        self.policy.model_optimizer.zero_grad(set_to_none=True)
        wm_loss.backward()
        wm_norm = torch.nn.utils.clip_grad_norm_(list(wm.parameters()), self.model_grad_clip)
        guard.check("world model", {**wm_metrics, "gradient norm": wm_norm}, self._n_updates)
        guard.step(self.policy.model_optimizer)
        tac = self._clock()

        start = _imagination_starts(post, batch["mask"], self.ac_indices)
        with self._autocast():
            actor_loss, critic_loss, ac_metrics = ac.losses(
                wm,
                start,
                self.imag_horizon,
                self.discount,
                self.return_lambda,
                self.ent_coef,
                self.slow_critic_reg,
                imagine=self.kernels.imagine,
            )
        self.policy.actor_optimizer.zero_grad(set_to_none=True)
        self.policy.critic_optimizer.zero_grad(set_to_none=True)
        (actor_loss + critic_loss).backward()
        actor_norm = torch.nn.utils.clip_grad_norm_(list(ac.actor.parameters()), self.actor_critic_grad_clip)
        critic_norm = torch.nn.utils.clip_grad_norm_(list(ac.critic.parameters()), self.actor_critic_grad_clip)
        norms = {"actor gradient norm": actor_norm, "critic gradient norm": critic_norm}
        guard.check("actor-critic", {**ac_metrics, **norms}, self._n_updates)
        guard.step(self.policy.actor_optimizer, self.policy.critic_optimizer)
        # (the slow critic follows only an applied critic step)
        ac.update_slow_critic(self.slow_critic_fraction * (1.0 - guard.found))
        self._n_updates += 1
        if self.profile_updates:
            toc = self._clock()
            self.update_timings["world_model"].append(tac - tic)
            self.update_timings["actor_critic"].append(toc - tac)
        return {key: value.detach() for key, value in {**wm_metrics, **ac_metrics}.items()}

    # -- logging -------------------------------------------------------------------
    def dump_logs(self) -> None:
        """Write the ``rollout/`` and ``time/`` logs (SB3's public hook, used by ``LogEveryNTimesteps``)."""
        elapsed = max(time.time_ns() - self.start_time, 1) / 1e9
        fps = int((self.num_timesteps - self._num_timesteps_at_start) / elapsed)
        if len(self.ep_info_buffer) > 0:
            self.logger.record("rollout/ep_rew_mean", safe_mean([ep["r"] for ep in self.ep_info_buffer]))
            self.logger.record("rollout/ep_len_mean", safe_mean([ep["l"] for ep in self.ep_info_buffer]))
        if self._sub_episode_returns:
            width = max(len(r) for r in self._sub_episode_returns)
            for k in range(width):
                values = [r[k] for r in self._sub_episode_returns if len(r) > k]
                self.logger.record(f"rollout/sub_episode_return_{k}", safe_mean(values))
        self.logger.record("time/episodes", self._episode_num, exclude="tensorboard")
        self.logger.record("time/fps", fps)
        self.logger.record("time/time_elapsed", int(elapsed), exclude="tensorboard")
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.record("train/buffer_bytes", self.replay_buffer.nbytes)
        self.logger.record("train/wm_horizon", self.wm_horizon())
        self.logger.dump(step=self.num_timesteps)

    # -- save / load -----------------------------------------------------------------
    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),
            "replay_buffer",
            "_rollout_state",
            "wm_horizon_schedule",
            "update_timings",
            "_run_state_left_out",
            "kernels",
            "device_replay",
        ]

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: list[str] | None = None,
        include: list[str] | None = None,
    ) -> None:
        """Save as SB3 does, plus the run state an exact resume needs; files are replaced atomically.

        The zip holds the policy, the three optimisers, the counters, a format
        version, the envs' meta-episodes in progress and the random generators
        (see :mod:`sb3_mamba.checkpoints`), and plain-JSON descriptions of the
        attributes SB3 pickles (spaces, policy class, ...) for ``load(..., safe=True)``
        (:mod:`sb3_mamba.safe_load`). A crash while saving leaves the previous
        file at ``path`` intact.

        :param path: where to save (``.zip`` appended when it has no suffix), or a file object.
        :param exclude: further attributes not to save, as in SB3.
        :param include: attributes to save although SB3 excludes them, as in SB3.
        """
        self._checkpoint_format = checkpoints.CHECKPOINT_FORMAT
        self._run_state = checkpoints.capture_run_state(self)
        setattr(self, safe_load.SAFE_DATA_KEY, safe_load.describe(self))
        try:
            if isinstance(path, (str, pathlib.Path)):
                checkpoints.atomic_write(path, "zip", lambda file: super(MAMBA, self).save(file, exclude, include))
            else:
                super().save(path, exclude, include)
        finally:
            del self._run_state
            delattr(self, safe_load.SAFE_DATA_KEY)

    @classmethod
    def load(  # type: ignore[override]  # (SB3's signature plus ``safe``)
        cls: type[SelfMAMBA],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: torch.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        safe: bool = False,
        **kwargs: Any,
    ) -> SelfMAMBA:
        """Load a model saved by :meth:`save` (see SB3's ``load``).

        A truncated, corrupted or foreign file, or one from a newer sb3-mamba,
        raises :class:`~sb3_mamba.checkpoints.CheckpointError` naming the cause;
        an env whose spaces differ from the saved ones raises ``ValueError``. To
        continue the saved run exactly, call ``learn(..., reset_num_timesteps=False)``
        after :meth:`load_replay_buffer`.

        Loading unpickles Python objects stored in the zip, and unpickling can run
        code: only load files you trust, or pass ``safe=True``.

        :param path: the model zip (``.zip`` appended if needed) or a file object.
        :param env: the env to continue on (its spaces must match), or None to only predict.
        :param device: where the model runs.
        :param custom_objects: values used instead of the saved ``data`` entries of the same names (as in SB3).
        :param print_system_info: print the saving and the current system's versions.
        :param force_reset: as in SB3 (the envs are reset before training).
        :param safe: unpickle nothing (:mod:`sb3_mamba.safe_load`): the tensors are read with
            ``torch.load(weights_only=True)``, and the attributes SB3 pickles are rebuilt from
            plain JSON that :meth:`save` writes next to them or refused with
            :class:`~sb3_mamba.safe_load.UnsafeFileError` naming the entry (also when a tensor
            file holds other objects). The saved run state (random generators, the envs'
            meta-episodes in progress) is left out: weights, optimisers, counters and the replay
            sampling generator are restored, and training restarts the envs' meta-episodes.
        :param kwargs: attributes to set on the loaded model, as in SB3.
        """
        run_state_left_out = False
        if safe:
            path, custom_objects, run_state_left_out = safe_load.prepare_safe_load(
                path, cls.policy_aliases.values(), custom_objects
            )
        else:
            checkpoints.check_model_file(path)
        model = super().load(
            path,
            env=env,
            device=device,
            custom_objects=custom_objects,
            print_system_info=print_system_info,
            force_reset=force_reset,
            **kwargs,
        )
        model.__dict__.pop(safe_load.SAFE_DATA_KEY, None)
        if run_state_left_out:
            model._run_state_left_out = True
        return model

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.model_optimizer", "policy.actor_optimizer", "policy.critic_optimizer"], []

    def save_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase) -> None:
        """Save the replay buffer (complete and in-progress meta-episodes), replacing ``path`` atomically.

        A path ending in ``.npz`` gets plain NumPy arrays, which :meth:`load_replay_buffer` reads without
        unpickling (also with ``safe=True``); any other path (``.pkl`` appended when it has no suffix) or
        file object gets a pickle, as SB3 writes.

        :param path: the file to write, or a file object.
        """
        if isinstance(path, (str, pathlib.Path)) and safe_load.is_npz(path):
            checkpoints.atomic_write(path, "npz", lambda file: safe_load.save_replay_npz(file, self.replay_buffer))
        elif isinstance(path, (str, pathlib.Path)):
            checkpoints.atomic_write(path, "pkl", lambda file: save_to_pkl(file, self.replay_buffer, self.verbose))
        else:
            save_to_pkl(path, self.replay_buffer, self.verbose)

    def load_replay_buffer(
        self, path: str | pathlib.Path | io.BufferedIOBase, truncate_last_traj: bool = True, safe: bool = False
    ) -> None:
        """Restore a replay buffer saved by :meth:`save_replay_buffer`.

        A ``.npz`` file (a file object: one starting with a zip's signature) is read with
        ``np.load(allow_pickle=False)``; anything else is unpickled, which can run code: only
        load pickles you trust.

        :param path: the file (``.pkl`` appended to a path without suffix), or a file object.
        :param truncate_last_traj: accepted for rl_zoo3's ``--trained-agent`` (HER's option); unfinished
            meta-episodes are kept when the run resumes exactly and dropped when its envs restart.
        :param safe: refuse pickles (:class:`~sb3_mamba.safe_load.UnsafeFileError`): only ``.npz`` is read.
        """
        if safe_load.is_npz(path):
            buffer = safe_load.load_replay_npz(path)
        elif safe:
            raise safe_load.UnsafeFileError(
                f"safe=True refuses {path}: a pickled replay buffer can run code when loaded. Save the buffer "
                "as .npz (model.save_replay_buffer('replay_buffer.npz'): plain arrays) and load that, or load "
                "this file with safe=False only if you trust it."
            )
        else:
            try:
                buffer = load_from_pkl(path, self.verbose)
            except FileNotFoundError:
                raise
            except Exception as exc:  # pickle raises many types on a damaged file
                raise CheckpointError(
                    f"{path} is not a readable replay buffer (truncated or corrupted?): {type(exc).__name__}: {exc}"
                ) from exc
        if not isinstance(buffer, MetaEpisodeBuffer):
            raise CheckpointError(f"{path} does not hold a MetaEpisodeBuffer (got {type(buffer).__name__}).")
        for name in ("observation_space", "action_space"):
            if getattr(buffer, name) != getattr(self, name):
                raise CheckpointError(
                    f"The replay buffer in {path} was recorded with {name} {getattr(buffer, name)}, "
                    f"this model has {getattr(self, name)}."
                )
        if buffer.n_envs != self.n_envs:
            buffer.n_envs = self.n_envs
            buffer.discard_open()  # in-progress meta-episodes belong to the old envs
        self.replay_buffer = buffer


def _replace_done_obs(
    new_obs: Any, dones: np.ndarray, infos: list[dict], unnormalize: Callable[[Any], Any] | None = None
) -> Any:
    """The VecEnv already reset finished envs: put their final observation back for the buffer.

    :param new_obs: the observations the VecEnv returned (the next meta-episode's first for finished envs).
    :param dones: which envs finished.
    :param infos: the VecEnv's infos, holding each finished env's ``"terminal_observation"``.
    :param unnormalize: applied to each final observation first (VecNormalize normalised those in ``infos``).
    """
    if not dones.any():
        return new_obs
    final = {k: v.copy() for k, v in new_obs.items()} if isinstance(new_obs, dict) else new_obs.copy()
    for i in np.flatnonzero(dones):
        terminal = infos[i]["terminal_observation"]
        if unnormalize is not None:
            terminal = unnormalize(terminal)
        if isinstance(final, dict):
            for k in final:
                final[k][i] = terminal[k]
        else:
            final[i] = terminal
    return final


def _imagination_starts(post: dict[str, torch.Tensor], mask: torch.Tensor, num: int | None) -> ImaginationStarts:
    """Detached posterior states at ``num`` uniform valid indices per sequence (all valid steps if None).

    With more starts than states (MAMBA: 512 per sequence from H' + 1 states) the
    starts are an index into the (B*T) posterior states, so per-state work is done once.
    """
    deter, stoch = post["deter"].detach(), post["stoch"].detach()  # (B, T, D), (B, T, S, C)
    batch, steps = mask.shape
    if num is None:
        valid = mask.reshape(-1)
        return ImaginationStarts(deter.reshape(-1, deter.shape[-1])[valid], stoch.flatten(0, 1)[valid])
    index = sample_valid_indices(mask, num)  # (B, L)
    if num < steps:  # fewer starts than states: gather them
        rows = torch.arange(batch, device=mask.device).unsqueeze(1)
        return ImaginationStarts(deter[rows, index].flatten(0, 1), stoch[rows, index].flatten(0, 1))
    flat = (index + steps * torch.arange(batch, device=mask.device).unsqueeze(1)).reshape(-1)  # (B*L,)
    return ImaginationStarts(deter.flatten(0, 1), stoch.flatten(0, 1), flat)


def _check_finite_data(obs: Any, rewards: np.ndarray, infos: list[dict], dones: np.ndarray, step: int) -> None:
    """Raise :class:`NonFiniteError` naming the env and the entry if an env returned NaN/Inf."""
    arrays = {"reward": rewards, **(obs if isinstance(obs, dict) else {"observation": obs})}
    for i in np.flatnonzero(dones):  # the final observation of a finished meta-episode is stored too
        final = infos[i].get("terminal_observation")
        if final is not None:
            arrays.update(
                {
                    f"terminal {k}": v[None]
                    for k, v in (final.items() if isinstance(final, dict) else {"observation": final}.items())
                }
            )
    for name, values in arrays.items():
        values = np.asarray(values)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            env_index = int(np.argwhere(~np.isfinite(values.reshape(len(values), -1)))[0, 0])
            raise NonFiniteError(
                f"The env returned a non-finite {name} (env {env_index} of the VecEnv, after env step "
                f"{step}): {values[env_index]}. Nothing was stored or trained on; the last checkpoint is intact."
            )


class SkipNonFinite:
    """Skips the optimiser steps of an update stage whose losses or gradient norms are not finite, and of
    every stage after it, without reading anything on the host: each check adds to a flag on the device
    that the fused Adam steps read as their ``found_inf`` (as ``torch.amp.GradScaler`` skips a step).
    :meth:`raise_if_skipped` reads the flag once, after the updates.

    :param device: where the updates run.
    """

    def __init__(self, device: torch.device):
        #: 1.0 once a stage was not finite, else 0.0 (0-d, float32: fused Adam's ``found_inf``)
        self.found = torch.zeros((), device=device)
        #: (stage, its value names, (K,) which are finite, update number) per check
        self.checks: list[tuple[str, list[str], torch.Tensor, int]] = []

    def check(self, stage: str, values: dict[str, torch.Tensor], update: int) -> None:
        """Record ``values`` (0-d tensors: losses, metrics, gradient norms) of ``stage`` of update ``update``."""
        # (K,)
        finite = torch.isfinite(torch.stack([value.detach().float() for value in values.values()]))
        self.found = torch.maximum(self.found, (~finite.all()).float())
        self.checks.append((stage, list(values), finite, update))

    def step(self, *optimizers: torch.optim.Optimizer) -> None:
        """Each optimiser's step, skipped once a stage was not finite."""
        for optimizer in optimizers:
            optimizer.found_inf = self.found  # type: ignore[attr-defined]  # read by fused Adam's step
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf  # type: ignore[attr-defined]

    def raise_if_skipped(self, model: MAMBA) -> None:
        """Raise :class:`NonFiniteLossError` naming the first stage that was not finite, with ``model``'s
        update count set back to the updates applied in full."""
        if not bool(self.found):
            return
        stage, names, finite, update = next(check for check in self.checks if not bool(check[2].all()))
        bad = [name for name, ok in zip(names, finite.tolist(), strict=True) if not ok]
        model._n_updates = update
        raise NonFiniteLossError(
            f"Non-finite {stage} {', '.join(bad)} in update {update}: its {stage} step and every later "
            "step were skipped, so the model holds only finite updates and the last saved checkpoint is "
            "intact. Check observations/rewards for NaN/Inf or lower the learning rate."
        )

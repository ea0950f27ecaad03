"""RSSMPolicy: world model + actor-critic, acting with a recurrent latent like RecurrentPPO.

Acting is a filter: at every env step the RSSM posterior is updated with the
new observation and the previous action, and the actor reads its features.
The state is carried across sub-episode boundaries and reset only at a new
meta-episode (``episode_start``), which is exactly when a Gymnasium episode of
our envs starts. ``predict(obs, state, episode_start, deterministic)`` returns
``(action, state)`` with ``state = (deter, stoch, prev_action)`` NumPy arrays,
so ``evaluate_policy`` and ``rl_zoo3 enjoy`` work unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from torch import Tensor

from sb3_mamba.behavior import ActorCritic
from sb3_mamba.rssm import RSSM
from sb3_mamba.world_model import WorldModel

RecurrentState = tuple[Tensor, Tensor, Tensor]  # deter (n, D), stoch (n, S, C), previous action (n, A)


def _batch_size(obs: Any) -> int:
    """Number of rows of a batched observation tensor (or of each entry of a Dict observation)."""
    return next(iter(obs.values())).shape[0] if isinstance(obs, dict) else obs.shape[0]


class RSSMPolicy(BasePolicy):
    """The networks and optimisers of MAMBA (see :class:`sb3_mamba.MAMBA` for every hyperparameter).

    :param units: width of heads, actor and critic MLPs (MAMBA 128, Dreamer-Vanilla 512).
    :param head_layers: hidden layers of the reward/continue heads.
    :param actor_critic_layers: hidden layers of actor and critic.
    :param encoder_units: width of the vector encoder/decoder MLP (512, the reference's `mlp_units`).
    :param encoder_layers: layers of the vector encoder/decoder MLP (2; the reference uses 4 on Rooms, PRN,
        PRN-Wind and EscapeRoom: sb3_mamba/hyperparams/mamba.yml).
    :param cnn_depth: channels of the first conv layer for image observations.
    :param dyn_deter, dyn_stoch, dyn_discrete, dyn_hidden: RSSM sizes.
    :param unimix: uniform mixture of the latent categoricals.
    :param reconstruction_window: window of the reference's extra world-model heads (3; 0 turns them
        off; see :mod:`sb3_mamba.world_model`).
    :param actor_unimix: uniform mixture of the discrete actor.
    :param model_lr, actor_lr, critic_lr: Adam learning rates.
    :param model_eps, actor_critic_eps: Adam epsilons.
    :param normalize_images: accepted for SB3's ``BasePolicy.load``; must stay False (the world model
        scales uint8 images to [-0.5, 0.5] itself).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        units: int = 128,
        head_layers: int = 2,
        actor_critic_layers: int = 2,
        encoder_units: int = 512,
        encoder_layers: int = 2,
        cnn_depth: int = 32,
        dyn_deter: int = 512,
        dyn_stoch: int = 16,
        dyn_discrete: int = 16,
        dyn_hidden: int = 64,
        unimix: float = 0.01,
        reconstruction_window: int = 3,
        actor_unimix: float = 0.01,
        model_lr: float = 1e-4,
        actor_lr: float = 3e-5,
        critic_lr: float = 3e-5,
        model_eps: float = 1e-8,
        actor_critic_eps: float = 1e-5,
        normalize_images: bool = False,
    ):
        if normalize_images:
            raise ValueError("RSSMPolicy scales images itself (to [-0.5, 0.5]): normalize_images must be False.")
        super().__init__(observation_space, action_space, normalize_images=False)
        # every size and rate, so that ``policy.save`` / ``RSSMPolicy.load`` rebuild the same networks
        self._constructor_kwargs = dict(
            units=units,
            head_layers=head_layers,
            actor_critic_layers=actor_critic_layers,
            encoder_units=encoder_units,
            encoder_layers=encoder_layers,
            cnn_depth=cnn_depth,
            dyn_deter=dyn_deter,
            dyn_stoch=dyn_stoch,
            dyn_discrete=dyn_discrete,
            dyn_hidden=dyn_hidden,
            unimix=unimix,
            reconstruction_window=reconstruction_window,
            actor_unimix=actor_unimix,
            model_lr=model_lr,
            actor_lr=actor_lr,
            critic_lr=critic_lr,
            model_eps=model_eps,
            actor_critic_eps=actor_critic_eps,
        )
        self.discrete = isinstance(action_space, spaces.Discrete)
        if isinstance(action_space, spaces.Discrete):
            self.action_dim, self._start = int(action_space.n), int(action_space.start)
        else:
            self.action_dim, self._start = int(np.prod(action_space.shape or ())), 0
        self.world_model = WorldModel(
            observation_space,
            self.action_dim,
            units=units,
            head_layers=head_layers,
            encoder_units=encoder_units,
            encoder_layers=encoder_layers,
            cnn_depth=cnn_depth,
            deter=dyn_deter,
            stoch=dyn_stoch,
            classes=dyn_discrete,
            hidden=dyn_hidden,
            unimix=unimix,
            reconstruction_window=reconstruction_window,
        )
        self.actor_critic = ActorCritic(
            self.world_model.rssm.feat_dim,
            action_space,
            units=units,
            layers=actor_critic_layers,
            actor_unimix=actor_unimix,
        )
        # fused: Adam's update as one kernel over all parameters (the same update, to float rounding)
        self.model_optimizer = torch.optim.Adam(self.world_model.parameters(), lr=model_lr, eps=model_eps, fused=True)
        self.actor_optimizer = torch.optim.Adam(
            self.actor_critic.actor.parameters(), lr=actor_lr, eps=actor_critic_eps, fused=True
        )
        self.critic_optimizer = torch.optim.Adam(
            self.actor_critic.critic.parameters(), lr=critic_lr, eps=actor_critic_eps, fused=True
        )
        if isinstance(action_space, spaces.Box):
            self._low = torch.as_tensor(action_space.low, dtype=torch.float32)
            self._high = torch.as_tensor(action_space.high, dtype=torch.float32)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), **self._constructor_kwargs}

    # -- acting ------------------------------------------------------------------
    def initial_state(self, n: int) -> RecurrentState:
        initial = self.world_model.rssm.initial(n)
        prev_action = torch.zeros(n, self.action_dim, device=self.device)
        return initial["deter"].clone(), initial["stoch"].clone(), prev_action

    def observe(
        self, obs: Any, state: RecurrentState | None, episode_start: Tensor, sample: bool = True
    ) -> RecurrentState:
        """Posterior update with a batch of (unprocessed) observation tensors (n, ...).

        ``sample=False`` takes the latent's mode (deterministic acting).
        """
        n = episode_start.shape[0]
        if state is None:
            state = self.initial_state(n)
            episode_start = torch.ones_like(episode_start)
        deter, stoch, prev_action = state
        wm = self.world_model
        embed = wm.encode(wm.preprocess(obs))  # (n, E)
        first = episode_start if bool(episode_start.any()) else None
        post = wm.rssm.obs_step({"deter": deter, "stoch": stoch}, prev_action, embed, first, sample)
        return post["deter"], post["stoch"], prev_action

    #: True: deterministic acting takes the posterior latent's mode too (the ONNX export's semantics,
    #: :mod:`sb3_mamba.export`); False (default): it samples the latent, as the reference evaluates
    deterministic_latent: bool = False

    def act(
        self, obs: Any, state: RecurrentState | None, episode_start: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, RecurrentState]:
        """One acting step: returns the action vector (one-hot for Discrete, in [-1, 1] for Box) and the state."""
        # The latent is sampled either way (unless ``deterministic_latent``): ``deterministic`` takes the
        # actor's mode only, as the reference evaluates (``collect_dyn_sample``, ``actor.mode()``).
        sample_latent = not (deterministic and self.deterministic_latent)
        deter, stoch, _ = self.observe(obs, state, episode_start, sample=sample_latent)
        dist = self.actor_critic.policy(RSSM.feat({"deter": deter, "stoch": stoch}))
        if deterministic:
            action = dist.mode()
        else:
            action = dist.sample()  # (a Box action: clipped to [-1, 1])
        return action, (deter, stoch, action)

    def to_env_action(self, action: Tensor) -> np.ndarray:
        """Action vectors (n, A) -> what ``env.step`` takes (indices, or values scaled to the Box bounds)."""
        if self.discrete:
            return (action.argmax(-1) + self._start).cpu().numpy()
        low, high = self._low.to(action.device).reshape(-1), self._high.to(action.device).reshape(-1)
        scaled = low + (action + 1.0) * 0.5 * (high - low)
        return scaled.reshape(-1, *(self.action_space.shape or ())).cpu().numpy()

    def from_env_action(self, action: np.ndarray) -> Tensor:
        """Env actions (n, ...) -> action vectors (n, A) in the actor's space (used for random prefill)."""
        if self.discrete:
            index = torch.as_tensor(np.asarray(action).reshape(-1) - self._start, device=self.device)
            return torch.nn.functional.one_hot(index.long(), self.action_dim).float()
        value = torch.as_tensor(np.asarray(action, dtype=np.float32).reshape(-1, self.action_dim), device=self.device)
        low, high = self._low.to(self.device).reshape(-1), self._high.to(self.device).reshape(-1)
        return 2.0 * (value - low) / (high - low) - 1.0

    @torch.no_grad()
    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """SB3's recurrent predict: ``(action, state)``; pass ``state`` and ``episode_start`` back in."""
        if isinstance(observation, tuple) and len(observation) == 2 and isinstance(observation[1], dict):
            raise ValueError(
                "You have passed a tuple to predict() instead of a NumPy array or a dict: you are probably mixing "
                "the Gymnasium API (`obs, info = env.reset()`) with SB3's VecEnv API (`obs = vec_env.reset()`). "
                "Pass the observation only (see https://github.com/DLR-RM/stable-baselines3/issues/1694)."
            )
        if self.training:  # (a walk over every module: only when something switched it on)
            self.set_training_mode(False)
        obs_tensor, vectorized = self.obs_to_tensor(observation)
        n = _batch_size(obs_tensor)
        if episode_start is None:
            episode_start = np.zeros(n, dtype=bool) if state is not None else np.ones(n, dtype=bool)
        starts = torch.as_tensor(np.asarray(episode_start, dtype=bool).reshape(n), device=self.device)
        torch_state = None
        if state is not None:
            deter, stoch, prev_action = (torch.as_tensor(s, device=self.device) for s in state)
            torch_state = (deter, stoch, prev_action)
        action, new_state = self.act(obs_tensor, torch_state, starts, deterministic)
        env_action = self.to_env_action(action)
        if not vectorized:  # one observation: drop the batch axis, keep an ndarray (0-d for Discrete), as SB3
            env_action = env_action.squeeze(axis=0)
        return env_action, tuple(s.cpu().numpy() for s in new_state)

    def _predict(self, observation: Any, deterministic: bool = False) -> Tensor:
        # stateless single step (SB3's abstract hook); predict() above is the recurrent entry point
        n = _batch_size(observation)
        action, _ = self.act(observation, None, torch.ones(n, dtype=torch.bool, device=self.device), deterministic)
        return action

    def forward(self, *args, **kwargs):
        raise NotImplementedError("Use predict()/act(); MAMBA trains through MAMBA.train().")

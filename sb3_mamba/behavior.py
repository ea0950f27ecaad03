"""Actor-critic trained in imagination (DreamerV3), started from MAMBA's sampled posterior states.

MAMBA starts imagination from the detached posterior states at ``L_ac``
indices per sampled meta-episode (paper Sec. 3.3), so the behaviour learner
sees latents that encode the meta-episode's history since step 0.

:meth:`ActorCritic.imagine` rolls the actor out in the world model and reads
the heads (reward, continuation, critic, slow critic) on the imagined states;
:meth:`ActorCritic.losses` turns that :class:`Imagination` into the actor's and
critic's losses with the pure functions below. This is the ``"eager"``
backend's path; :mod:`sb3_mamba.kernels.imagination` computes the same
:class:`Imagination` faster (shared start states, factored features), checked
against this one. Shapes: ``N`` starts, ``M`` distinct start states, ``h``
imagination horizon, ``F`` feature size, ``A`` action size (``docs/shapes.md``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from sb3_mamba.distributions import BoundedNormal, OneHotCategorical, TwoHot, full_precision, one_hot_mode
from sb3_mamba.networks import mlp
from sb3_mamba.rssm import RSSM, State

if TYPE_CHECKING:  # (world_model imports nothing from here; the annotation only)
    from sb3_mamba.world_model import WorldModel


class ReturnNormalizer(nn.Module):
    """EMA of the 5th and 95th return percentiles; returns are divided by max(1, p95 - p5).

    Both averages start at 0, as in the reference (``RewardEMA``) and DreamerV3: early updates
    see a scale of ~1, which grows as the averages warm up.
    """

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95):
        super().__init__()
        self.decay, self.low_q, self.high_q = decay, low, high
        self.low: Tensor
        self.high: Tensor
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))

    @torch.no_grad()
    def update(self, returns: Tensor) -> None:
        flat = returns.detach().flatten().float()
        quantiles = torch.quantile(flat, torch.tensor([self.low_q, self.high_q], device=flat.device))
        self.low.lerp_(quantiles[0], 1.0 - self.decay)
        self.high.lerp_(quantiles[1], 1.0 - self.decay)

    def scale(self) -> Tensor:
        return (self.high - self.low).clamp_min(1.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints of sb3-mamba <= 0.1 carry an "initialized" flag (first update copied the quantiles)
        state_dict.pop(prefix + "initialized", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def lambda_returns(reward: Tensor, cont: Tensor, value: Tensor, discount: float, lam: float) -> Tensor:
    """TD(lambda) targets. reward, cont: (h, N) for steps 1..h; value: (h+1, N) for steps 0..h -> (h, N).

    R_t = r_{t+1} + discount * c_{t+1} * ((1 - lam) * v_{t+1} + lam * R_{t+1}), R_h = v_h.
    """
    returns = []
    next_return = value[-1]
    for t in reversed(range(reward.shape[0])):
        next_return = reward[t] + discount * cont[t] * ((1.0 - lam) * value[t + 1] + lam * next_return)
        returns.append(next_return)
    return torch.stack(returns[::-1])


def trajectory_weight(cont: Tensor, discount: float) -> Tensor:
    """Loss weight of imagined steps 0..h-1: the discounted probability that the episode reached them.

    cont: (h, N) continuation probabilities of the states at steps 0..h-1 (the start state's
    included) -> (h, N) with weight_t = prod_{k < t} discount * cont_k (weight_0 = 1), as the
    reference weights its actor and critic losses.
    """
    ones = torch.ones_like(cont[:1])
    return torch.cumprod(torch.cat([ones, discount * cont[:-1]]), 0).detach()


def actor_objective(returns: Tensor, baseline: Tensor, scale: Tensor, log_prob: Tensor | None) -> Tensor:
    """Per-step quantity the actor maximises (before entropy and weights), as the reference computes it.

    returns, baseline: (h, N) lambda-returns R_t and critic values v(s_t) of steps 0..h-1.
    Continuous actors (``log_prob`` None): dynamics backpropagation of (R_t - v(s_t)) / S, the
    baseline keeping its pathwise gradient through the imagined states (v(s_0) has none: the
    start is data). Discrete actors: REINFORCE, log pi(a_t | s_t) * sg(R_t - v(s_t)), with the
    *unscaled* advantage (the return scale S only enters dynamics backpropagation).
    """
    if log_prob is None:
        return (returns - baseline) / scale
    return log_prob * (returns - baseline).detach()


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Let gradients flow *through* ``module`` without computing gradients *for* its parameters."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


@dataclass
class ImaginationStarts:
    """N imagination starts as ``index`` (N,) into M distinct posterior states (None: the M states themselves)."""

    deter: Tensor  # (M, D)
    stoch: Tensor  # (M, S, C)
    index: Tensor | None = None

    def take(self, x: Tensor) -> Tensor:
        """(M, ...) per distinct state -> (N, ...) per start."""
        return x if self.index is None else x[self.index]

    @classmethod
    def of(cls, start: ImaginationStarts | State) -> ImaginationStarts:
        if isinstance(start, ImaginationStarts):
            return start
        return cls(start["deter"], start["stoch"])


class ActorCritic(nn.Module):
    """Actor, critic and slow (EMA) critic over RSSM features.

    :param feat_dim: RSSM feature size.
    :param action_space: ``Box`` (Normal actor, dynamics backprop) or ``Discrete``
        (one-hot categorical actor with unimix, REINFORCE).
    :param units, layers: MLP width and depth of actor and critic (MAMBA 128 x 2).
    """

    def __init__(
        self,
        feat_dim: int,
        action_space: spaces.Space,
        units: int = 128,
        layers: int = 2,
        actor_unimix: float = 0.01,
        min_std: float = 0.1,
        max_std: float = 1.0,
    ):
        super().__init__()
        self.discrete = isinstance(action_space, spaces.Discrete)
        if isinstance(action_space, spaces.Discrete):
            self.action_dim = int(action_space.n)
        else:
            self.action_dim = int(np.prod(action_space.shape or ()))
        self.actor_unimix, self.min_std, self.max_std = actor_unimix, min_std, max_std
        out = self.action_dim if self.discrete else 2 * self.action_dim
        self.actor = mlp(feat_dim, units, layers, out_dim=out)
        self.two_hot = TwoHot()
        self.critic = mlp(feat_dim, units, layers, out_dim=self.two_hot.num_bins, zero_out=True)
        self.slow_critic = copy.deepcopy(self.critic)
        self.slow_critic.requires_grad_(False)
        self.return_norm = ReturnNormalizer()

    def policy(self, feat: Tensor) -> OneHotCategorical | BoundedNormal:
        return self._dist(self.actor(feat))

    def mode(self, feat: Tensor) -> Tensor:
        """The actor's most likely action (one-hot, or the tanh mean in [-1, 1]) without building a
        distribution object (their argument checks cannot be captured by ``torch.export``)."""
        out = self.actor(feat)
        if self.discrete:  # unimix and softmax keep the argmax
            return one_hot_mode(out)
        return torch.tanh(out.chunk(2, dim=-1)[0])

    def _dist(self, out: Tensor) -> OneHotCategorical | BoundedNormal:
        if self.discrete:
            return OneHotCategorical(out, self.actor_unimix)
        mean, std = out.chunk(2, dim=-1)
        return BoundedNormal(mean, std, self.min_std, self.max_std)

    @torch.no_grad()
    def update_slow_critic(self, fraction: float | Tensor) -> None:
        """Move the slow critic ``fraction`` of the way to the critic (a 0-d tensor: read on the device)."""
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters(), strict=True):
            slow.lerp_(fast, fraction)

    def imagine(self, world_model: WorldModel, start: ImaginationStarts, horizon: int) -> Imagination:
        """Roll the actor out in ``world_model`` for ``horizon`` steps from N starts and read the heads.

        Continuous actors keep the graph through the (frozen) world model: dynamics
        backpropagation. Discrete ones roll the model out without gradients (REINFORCE needs
        none). The actor reads detached features (the reference's ``behavior_stop_grad``).
        """
        rssm = world_model.rssm
        through_model = torch.is_grad_enabled() and not self.discrete
        # starts are data for the behaviour learner, never a path back into the world model
        state = {"deter": start.take(start.deter).detach(), "stoch": start.take(start.stoch).detach()}
        feats, actions, actor_out = [RSSM.feat(state)], [], []
        with frozen(world_model):
            for _ in range(horizon):
                # (N, out)
                actor_out.append(self.actor(feats[-1].detach()))
                dist = self._dist(actor_out[-1])
                with torch.set_grad_enabled(through_model):
                    # (N, A)
                    action = dist.rsample() if isinstance(dist, BoundedNormal) and through_model else dist.sample()
                    state = rssm.img_step(state, action)
                feats.append(RSSM.feat(state))
                actions.append(action)
            # (h + 1, N, F): states 0..h, the start's without gradient
            feat = torch.stack(feats)
            with frozen(self.critic):
                # (h, N), (h + 1, N), (h + 1, N)
                reward = world_model.two_hot.mean(world_model.reward_head(feat[1:]))
                cont = torch.sigmoid(full_precision(world_model.continue_head(feat)).squeeze(-1))
                value = self.two_hot.mean(self.critic(feat))
        with torch.no_grad():
            # (h, N)
            slow_value = self.two_hot.mean(self.slow_critic(feat[:-1]))
        return Imagination(
            reward=reward,
            cont=cont[1:],
            start_cont=cont[0].detach(),
            value=value,
            critic_logits=self.critic(feat[:-1].detach()),
            slow_value=slow_value,
            actor_out=torch.stack(actor_out),
            actions=torch.stack(actions),
        )

    def losses(
        self,
        world_model: WorldModel,
        start: ImaginationStarts | State,
        horizon: int,
        discount: float,
        lam: float,
        entropy: float,
        slow_reg: float = 1.0,
        imagine: Callable[[ActorCritic, WorldModel, ImaginationStarts, int], Imagination] | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Actor and critic losses from imagined rollouts of ``horizon`` steps from ``start`` (N starts).

        :param world_model: the :class:`~sb3_mamba.world_model.WorldModel` (frozen here).
        :param start: the N start states.
        :param horizon: h, imagined transitions per start (the reference's ``imag_horizon`` minus 1).
        :param discount: gamma.
        :param lam: lambda of the lambda-returns.
        :param entropy: the actor's entropy coefficient.
        :param slow_reg: weight of the critic's regulariser towards the slow critic (1.0).
        :param imagine: ``(actor_critic, world_model, start, horizon) -> Imagination``, a backend's
            fast path of :meth:`imagine` (None: :meth:`imagine` itself).
        """
        start = ImaginationStarts.of(start)
        imagination = (
            self.imagine(world_model, start, horizon) if imagine is None else imagine(self, world_model, start, horizon)
        )
        return behavior_losses(imagination, self, discount, lam, entropy, slow_reg)


class Imagination(NamedTuple):
    """What the losses read from a rollout of h steps from N starts (states 0..h, 0 the start)."""

    #: (h, N) predicted rewards of states 1..h
    reward: Tensor
    #: (h, N) continuation probabilities of states 1..h
    cont: Tensor
    #: (N,) the start state's continuation probability (weights only, no gradient)
    start_cont: Tensor
    #: (h + 1, N) critic values of states 0..h (pathwise gradient to continuous actions only)
    value: Tensor
    #: (h, N, bins) the critic's logits of states 0..h-1 on detached features (its own loss)
    critic_logits: Tensor
    #: (h, N) the slow critic's values of states 0..h-1
    slow_value: Tensor
    #: (h, N, out) the actor's outputs at states 0..h-1
    actor_out: Tensor
    #: (h, N, A) the actions taken
    actions: Tensor


def behavior_losses(
    imagination: Imagination, actor_critic: ActorCritic, discount: float, lam: float, entropy: float, slow_reg: float
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The actor's and the critic's losses of one :class:`Imagination` (updates the return normaliser)."""
    im, two_hot = imagination, actor_critic.two_hot
    # (h, N)
    returns = lambda_returns(im.reward, im.cont, im.value, discount, lam)
    # (h, N)
    weight = trajectory_weight(torch.cat([im.start_cont[None], im.cont[:-1]]), discount)

    actor_critic.return_norm.update(returns)
    scale = actor_critic.return_norm.scale()
    dist = actor_critic._dist(im.actor_out)
    log_prob = dist.log_prob(im.actions) if actor_critic.discrete else None
    # (h, N)
    objective = actor_objective(returns, im.value[:-1], scale, log_prob)
    actor_entropy = dist.entropy()
    actor_loss = -(weight * (objective + entropy * actor_entropy)).mean()

    # (h, N, bins): one log-softmax for both targets
    critic_log_probs = torch.log_softmax(full_precision(im.critic_logits), dim=-1)
    critic_nll = -two_hot.log_prob_normalized(critic_log_probs, returns.detach())
    critic_nll = critic_nll - slow_reg * two_hot.log_prob_normalized(critic_log_probs, im.slow_value)
    critic_loss = (weight * critic_nll).mean()
    metrics = {
        "actor_loss": actor_loss,
        "critic_loss": critic_loss,
        "actor_entropy": actor_entropy.mean(),
        "imag_return": returns.mean(),
        "imag_reward": im.reward.mean(),
        "return_scale": scale,
    }
    return actor_loss, critic_loss, metrics

"""Actor-critic trained in imagination (DreamerV3), started from MAMBA's sampled posterior states.

MAMBA starts imagination from the detached posterior states at ``L_ac``
indices per sampled meta-episode (paper Sec. 3.3), so the behaviour learner
sees latents that encode the meta-episode's history since step 0.

Shapes: ``N`` imagination starts, ``H`` imagination horizon, ``F`` feature size.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
from gymnasium import spaces
from torch import Tensor, nn

from sb3_mamba.distributions import BoundedNormal, OneHotCategorical, TwoHot
from sb3_mamba.networks import mlp
from sb3_mamba.rssm import RSSM, State


class ReturnNormalizer(nn.Module):
    """EMA of the 5th and 95th return percentiles; returns are divided by max(1, p95 - p5)."""

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95):
        super().__init__()
        self.decay, self.low_q, self.high_q = decay, low, high
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, returns: Tensor) -> None:
        flat = returns.detach().flatten().float()
        low, high = torch.quantile(flat, self.low_q), torch.quantile(flat, self.high_q)
        if not self.initialized:
            self.low.copy_(low)
            self.high.copy_(high)
            self.initialized.fill_(True)
        else:
            self.low.lerp_(low, 1.0 - self.decay)
            self.high.lerp_(high, 1.0 - self.decay)

    def scale(self) -> Tensor:
        return (self.high - self.low).clamp_min(1.0)


def lambda_returns(reward: Tensor, cont: Tensor, value: Tensor, discount: float, lam: float) -> Tensor:
    """TD(lambda) targets. reward, cont: (H, N) for steps 1..H; value: (H+1, N) for steps 0..H -> (H, N).

    R_t = r_{t+1} + discount * c_{t+1} * ((1 - lam) * v_{t+1} + lam * R_{t+1}), R_H = v_H.
    """
    returns = []
    next_return = value[-1]
    for t in reversed(range(reward.shape[0])):
        next_return = reward[t] + discount * cont[t] * ((1.0 - lam) * value[t + 1] + lam * next_return)
        returns.append(next_return)
    return torch.stack(returns[::-1])


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Let gradients flow *through* ``module`` without computing gradients *for* its parameters."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class ActorCritic(nn.Module):
    """Actor, critic and slow (EMA) critic over RSSM features.

    :param feat_dim: RSSM feature size.
    :param action_space: ``Box`` (Normal actor, dynamics backprop) or ``Discrete``
        (one-hot categorical actor with unimix, REINFORCE).
    :param units, layers: MLP width and depth of actor and critic (MAMBA 128 x 2).
    """

    def __init__(self, feat_dim: int, action_space: spaces.Space, units: int = 128, layers: int = 2,
                 actor_unimix: float = 0.01, min_std: float = 0.1, max_std: float = 1.0):
        super().__init__()
        self.discrete = isinstance(action_space, spaces.Discrete)
        self.action_dim = int(action_space.n) if self.discrete else int(action_space.shape[0])
        self.actor_unimix, self.min_std, self.max_std = actor_unimix, min_std, max_std
        out = self.action_dim if self.discrete else 2 * self.action_dim
        self.actor = mlp(feat_dim, units, layers, out_dim=out)
        self.two_hot = TwoHot()
        self.critic = mlp(feat_dim, units, layers, out_dim=self.two_hot.num_bins, zero_out=True)
        self.slow_critic = copy.deepcopy(self.critic)
        self.slow_critic.requires_grad_(False)
        self.return_norm = ReturnNormalizer()

    def policy(self, feat: Tensor) -> OneHotCategorical | BoundedNormal:
        out = self.actor(feat)
        if self.discrete:
            return OneHotCategorical(out, self.actor_unimix)
        mean, std = out.chunk(2, dim=-1)
        return BoundedNormal(mean, std, self.min_std, self.max_std)

    @torch.no_grad()
    def update_slow_critic(self, fraction: float) -> None:
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
            slow.lerp_(fast, fraction)

    def imagine(self, rssm: RSSM, start: State, horizon: int) -> tuple[Tensor, Tensor]:
        """Roll the actor out in the model: start fields (N, ...) -> feats (H+1, N, F), actions (H, N, A).

        Continuous actors keep the graph through the RSSM (dynamics backprop);
        discrete ones roll out without gradients (REINFORCE needs none).
        """
        # starts are data for the behaviour learner, never a path back into the world model
        state = {"deter": start["deter"].detach(), "stoch": start["stoch"].detach()}
        feats, actions = [RSSM.feat(state)], []
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.discrete):
            for _ in range(horizon):
                dist = self.policy(feats[-1].detach() if self.discrete else feats[-1])
                action = dist.sample() if self.discrete else dist.rsample()
                state = rssm.img_step(state, action)
                feats.append(RSSM.feat(state))
                actions.append(action)
        return torch.stack(feats), torch.stack(actions)

    def losses(self, world_model, start: State, horizon: int, discount: float, lam: float, entropy: float,
               slow_reg: float = 1.0) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Actor and critic losses from imagined rollouts of ``horizon`` steps from ``start`` (N states)."""
        # the actor's gradient flows through the model and the critic but updates neither
        with frozen(world_model), frozen(self.critic):
            feats, actions = self.imagine(world_model.rssm, start, horizon)  # (H+1, N, F), (H, N, A)
            reward = world_model.two_hot.mean(world_model.reward_head(feats[1:]))  # (H, N)
            cont = torch.sigmoid(world_model.continue_head(feats[1:]).squeeze(-1))  # (H, N)
            value = self.two_hot.mean(self.critic(feats))  # (H+1, N)
            returns = lambda_returns(reward, cont, value, discount, lam)  # (H, N)
        # weight of step t: probability the imagined episode is still running
        weight = torch.cumprod(torch.cat([torch.ones_like(cont[:1]), discount * cont[:-1]]), 0).detach()

        self.return_norm.update(returns)
        scale = self.return_norm.scale()
        dist = self.policy(feats[:-1].detach() if self.discrete else feats[:-1])
        if self.discrete:  # REINFORCE with the critic as baseline
            advantage = ((returns - value[:-1]) / scale).detach()
            objective = dist.log_prob(actions) * advantage
        else:  # dynamics backpropagation through the model
            objective = returns / scale
        actor_entropy = dist.entropy()
        actor_loss = -(weight * (objective + entropy * actor_entropy)).mean()

        critic_feat = feats[:-1].detach()
        logits = self.critic(critic_feat)
        slow_target = self.two_hot.mean(self.slow_critic(critic_feat)).detach()
        critic_nll = -self.two_hot.log_prob(logits, returns.detach())
        critic_nll = critic_nll - slow_reg * self.two_hot.log_prob(logits, slow_target)
        critic_loss = (weight * critic_nll).mean()
        metrics = {
            "actor_loss": actor_loss,
            "critic_loss": critic_loss,
            "actor_entropy": actor_entropy.mean(),
            "imag_return": returns.mean(),
            "imag_reward": reward.mean(),
            "return_scale": scale,
        }
        return actor_loss, critic_loss, metrics

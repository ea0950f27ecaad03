"""Actor-critic trained in imagination (DreamerV3), started from MAMBA's sampled posterior states.

MAMBA starts imagination from the detached posterior states at ``L_ac``
indices per sampled meta-episode (paper Sec. 3.3), so the behaviour learner
sees latents that encode the meta-episode's history since step 0.

Shapes: ``N`` imagination starts, ``M`` distinct start states, ``H`` imagination
horizon, ``F`` feature size.

MAMBA draws ``L_ac`` = 512 starts per sequence with replacement from the H' + 1
posterior states of a prefix, so at H' = 200 the 8192 starts hold only ~3200
distinct states. Everything that depends on the start state alone (actor and
critic outputs at step 0, the state's half of the first GRU gate layer, about
a third of the imagination FLOPs) is computed once per distinct state and
indexed. The actor's outputs from the rollout are reused by its loss. On
discrete actions nothing differentiates through the rollout, so the first step
runs once per distinct (start state, action) pair, the features stay factored
(:class:`~sb3_mamba.networks.FactoredInput`: one-hot latent as a gather, shared
deterministic states once), the heads that need no gradient (reward,
continuation, slow critic, the last step's critic) share one first layer per
step, and the critic's gradient pass covers only the steps of its loss.
``benchmarks/plain_update.py`` keeps the plain formulation;
``tests/test_equivalence.py`` checks both agree.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from sb3_mamba.distributions import BoundedNormal, OneHotCategorical, TwoHot, full_precision, one_hot_mode
from sb3_mamba.networks import FactoredInput, mlp, mlp_outputs
from sb3_mamba.rssm import RSSM, State


class ReturnNormalizer(nn.Module):
    """EMA of the 5th and 95th return percentiles; returns are divided by max(1, p95 - p5).

    Both averages start at 0, as in the reference (``RewardEMA``) and DreamerV3: early updates
    see a scale of ~1, which grows as the averages warm up.
    """

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95):
        super().__init__()
        self.decay, self.low_q, self.high_q = decay, low, high
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
    """TD(lambda) targets. reward, cont: (H, N) for steps 1..H; value: (H+1, N) for steps 0..H -> (H, N).

    R_t = r_{t+1} + discount * c_{t+1} * ((1 - lam) * v_{t+1} + lam * R_{t+1}), R_H = v_H.
    """
    returns = []
    next_return = value[-1]
    for t in reversed(range(reward.shape[0])):
        next_return = reward[t] + discount * cont[t] * ((1.0 - lam) * value[t + 1] + lam * next_return)
        returns.append(next_return)
    return torch.stack(returns[::-1])


def trajectory_weight(cont: Tensor, discount: float) -> Tensor:
    """Loss weight of imagined steps 0..H-1: the discounted probability that the episode reached them.

    cont: (H, N) continuation probabilities of the states at steps 0..H-1 (the start state's
    included) -> (H, N) with weight_t = prod_{k < t} discount * cont_k (weight_0 = 1), as the
    reference weights its actor and critic losses.
    """
    ones = torch.ones_like(cont[:1])
    return torch.cumprod(torch.cat([ones, discount * cont[:-1]]), 0).detach()


def actor_objective(returns: Tensor, baseline: Tensor, scale: Tensor, log_prob: Tensor | None) -> Tensor:
    """Per-step quantity the actor maximises (before entropy and weights), as the reference computes it.

    returns, baseline: (H, N) lambda-returns R_t and critic values v(s_t) of steps 0..H-1.
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
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def _step_outputs(feats: list[FactoredInput], mlps: list[nn.Sequential], rows: int) -> list[Tensor]:
    """``mlps`` on the features of several steps (first layers shared): (len(feats), rows, out) each."""
    if not feats:
        return [mlp[-1].weight.new_zeros(0, rows, mlp[-1].out_features) for mlp in mlps]
    return [out.unflatten(0, (len(feats), rows)) for out in mlp_outputs(FactoredInput.cat(feats), mlps)]


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
    def of(cls, start: "ImaginationStarts | State") -> "ImaginationStarts":
        return start if isinstance(start, cls) else cls(start["deter"], start["stoch"])


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
        self.action_dim = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
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
    def update_slow_critic(self, fraction: float) -> None:
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
            slow.lerp_(fast, fraction)

    def imagine(self, rssm: RSSM, start: ImaginationStarts,
                horizon: int) -> tuple[Tensor, Tensor | list[FactoredInput], Tensor, Tensor]:
        """Roll the actor out in the model for ``horizon`` steps.

        Returns the start features (M, F) (per distinct state), the features of steps 1..H,
        actions (H, N, A) and the actor's outputs at steps 0..H-1 (H, N, out), which keep
        their graph for the actor loss. Continuous actors keep the graph through the RSSM
        (dynamics backprop) and get the features as one (H, N, F) tensor. Discrete ones
        roll the model out without gradients (REINFORCE needs none) and get a
        :class:`FactoredInput` per step, which the heads' first layers read as a gather
        over the one-hot latent plus a matmul over the distinct deterministic states.
        """
        # starts are data for the behaviour learner, never a path back into the world model
        deter0, stoch0 = start.deter.detach(), start.stoch.detach()
        feat0 = RSSM.feat({"deter": deter0, "stoch": stoch0})  # (M, F)
        actor_out = [start.take(self.actor(feat0))]
        through_model = torch.is_grad_enabled() and not self.discrete
        # A discrete first action takes one of A values, so the first step's deterministic state
        # depends only on the (start state, action) pair: computed once per distinct pair.
        first_step_per_pair = self.discrete and start.index is not None
        with torch.set_grad_enabled(through_model):
            deter_proj = rssm.gru.project_hidden(deter0)  # (M, 3D)
        deter_rows = None  # (N,) into the state's distinct deterministic states, where they are shared
        if not first_step_per_pair:
            state = {"deter": start.take(deter0), "stoch": start.take(stoch0)}
            deter_proj = start.take(deter_proj)  # (N, 3D)
        feats: list = []
        actions = []
        for t in range(horizon):
            dist = self._dist(actor_out[-1])
            with torch.set_grad_enabled(through_model):
                action = dist.rsample() if through_model else dist.sample()
                if t == 0 and first_step_per_pair:
                    state, feat, deter_proj, deter_rows = self._first_step_per_pair(
                        rssm, start, deter_proj, action, project_next=horizon > 1)
                else:
                    state = rssm.img_step(state, action, deter_proj=deter_proj, deter_rows=deter_rows)
                    deter_proj, deter_rows = None, None
                    feat = (RSSM.factored_feat(state["stoch"], state["deter"]) if self.discrete
                            else RSSM.feat(state))
            feats.append(feat)
            actions.append(action)
            if t < horizon - 1:
                # The actor reads detached features (reference ``behavior_stop_grad``, DreamerV3): its
                # outputs at later steps never pass gradients back into earlier actions.
                actor_in = feat if self.discrete else feat.detach()
                actor_out.append(mlp_outputs(actor_in, [self.actor])[0])
        return (feat0, feats if self.discrete else torch.stack(feats), torch.stack(actions),
                torch.stack(actor_out))

    @staticmethod
    def _first_step_per_pair(rssm: RSSM, start: ImaginationStarts, deter_proj: Tensor, action: Tensor,
                             project_next: bool) -> tuple[State, FactoredInput, Tensor | None, Tensor]:
        """The first imagination step of one-hot ``action`` (N, A) from N starts, without gradients.

        The GRU step, the prior's logits and (if ``project_next``) the next step's
        ``project_hidden`` run once per distinct (start state, action) pair, P <= min(N, M * A)
        rows; the latent is drawn for each start, with the same random numbers as a step over
        all N rows. ``deter_proj`` (M, 3D) is the start states' ``project_hidden``.
        Returns the state (``deter`` (P, D) per pair, ``stoch`` and ``logits`` per start), its
        features, the next step's ``deter_proj`` (P, 3D) or None, and the pair of each start (N,).
        """
        num_actions = action.shape[-1]
        pairs, pair_of_start = torch.unique(start.index * num_actions + action.argmax(-1), return_inverse=True)
        state_of_pair = pairs // num_actions  # (P,)
        pair_action = torch.zeros(len(pairs), num_actions, dtype=action.dtype, device=action.device)
        pair_action.scatter_(1, (pairs % num_actions).unsqueeze(1), 1.0)  # (P, A) one-hot
        pair_start = {"deter": start.deter, "stoch": start.stoch[state_of_pair]}  # deter (M, D) via state_of_pair
        deter = rssm.deter_step(pair_start, pair_action, deter_proj, deter_rows=state_of_pair)  # (P, D)
        stoch, logits = rssm.prior(deter, rows=pair_of_start)  # (N, S, C)
        next_proj = rssm.gru.project_hidden(deter) if project_next else None
        state = {"deter": deter, "stoch": stoch, "logits": logits}
        return state, RSSM.factored_feat(stoch, deter, pair_of_start), next_proj, pair_of_start

    def losses(self, world_model, start: ImaginationStarts | State, horizon: int, discount: float, lam: float,
               entropy: float, slow_reg: float = 1.0) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Actor and critic losses from imagined rollouts of ``horizon`` steps from ``start`` (N starts)."""
        start = ImaginationStarts.of(start)
        # the actor's gradient flows through the model (continuous actions) but does not update it
        with frozen(world_model):
            feat0, feats, actions, actor_out = self.imagine(world_model.rssm, start, horizon)
        reward_head, continue_head = world_model.reward_head, world_model.continue_head
        critic0 = start.take(self.critic(feat0))  # (N, bins), step 0 (its input carries no gradient)
        with torch.no_grad():
            slow0 = start.take(self.slow_critic(feat0))
        if self.discrete:
            # Nothing differentiates through the rollout: the heads without gradients share their first
            # matmul per step, and the critic's gradient pass covers only the steps of its loss.
            mid, last = feats[:-1], feats[-1]  # steps 1..H-1 and step H
            with torch.no_grad():
                reward_mid, cont_mid, slow_mid = _step_outputs(mid, [reward_head, continue_head, self.slow_critic],
                                                               len(last))
                reward_last, cont_last, critic_last = mlp_outputs(last, [reward_head, continue_head, self.critic])
            two_hot = world_model.two_hot
            reward = torch.cat([two_hot.mean(reward_mid), two_hot.mean(reward_last)[None]])  # (H, N), steps 1..H
            cont_logits = torch.cat([cont_mid, cont_last[None]])
            critic_mid = _step_outputs(mid, [self.critic], len(last))[0]
            critic_logits = torch.cat([critic0[None], critic_mid])  # (H, N, bins), steps 0..H-1
            value = torch.cat([self.two_hot.mean(critic_logits), self.two_hot.mean(critic_last)[None]]).detach()
            slow_target = torch.cat([self.two_hot.mean(slow0)[None], self.two_hot.mean(slow_mid)])
        else:  # rewards, continuation and values carry the actor's gradient through the features
            with frozen(world_model), frozen(self.critic):
                reward_logits, cont_logits, value_logits = mlp_outputs(feats, [reward_head, continue_head,
                                                                               self.critic])
            reward = world_model.two_hot.mean(reward_logits)  # (H, N), steps 1..H
            value = torch.cat([self.two_hot.mean(critic0).detach()[None], self.two_hot.mean(value_logits)])
            critic_logits = torch.cat([critic0[None], self.critic(feats[:-1].detach())])
            with torch.no_grad():
                slow_target = torch.cat([self.two_hot.mean(slow0)[None],
                                         self.two_hot.mean(self.slow_critic(feats[:-1]))])
        cont = torch.sigmoid(full_precision(cont_logits).squeeze(-1))  # (H, N), steps 1..H
        returns = lambda_returns(reward, cont, value, discount, lam)  # (H, N)
        with torch.no_grad():  # the start state's continuation enters the weights only
            cont0 = torch.sigmoid(full_precision(start.take(continue_head(feat0))).squeeze(-1))  # (N,)
        weight = trajectory_weight(torch.cat([cont0[None], cont[:-1]]), discount)  # (H, N)

        self.return_norm.update(returns)
        scale = self.return_norm.scale()
        dist = self._dist(actor_out)  # steps 0..H-1
        log_prob = dist.log_prob(actions) if self.discrete else None
        objective = actor_objective(returns, value[:-1], scale, log_prob)
        actor_entropy = dist.entropy()
        actor_loss = -(weight * (objective + entropy * actor_entropy)).mean()

        critic_log_probs = torch.log_softmax(full_precision(critic_logits), dim=-1)  # one pass for both targets
        critic_nll = -self.two_hot.log_prob_normalized(critic_log_probs, returns.detach())
        critic_nll = critic_nll - slow_reg * self.two_hot.log_prob_normalized(critic_log_probs, slow_target)
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

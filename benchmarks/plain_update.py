"""The plain eager formulation of MAMBA's update, for same-run baselines and equivalence tests.

``with plain_update(model): model.train(n)`` runs the update the way the reference
implementation (dreamerv3-torch) writes it, on the same modules and parameters:

* RSSM observe loop: every step also computes the prior (logits and a sample, as
  ``obs_step`` does in the reference) and the posterior's input layer on
  ``cat([deter, embed])``;
* categorical samples with ``torch.multinomial``;
* the actor-critic losses with the reference's semantics and structure (``ImagBehavior._train``:
  heads on every imagined state including the start, gamma * cont per state as the discount and
  the weights, detached actor inputs, (R - v) / S for dynamics backpropagation with the
  baseline's pathwise gradient, sg(R - v) for REINFORCE), imagination from the 8192 gathered
  start states (no sharing of per-state work), the actor re-run for its loss, the critic run
  twice (targets, loss), each head on its own;
* the GRU cell on ``cat([x, h])`` with ``u * c + (1 - u) * h``, two-hot losses as
  dense ``(encode(y) * log_softmax).sum(-1)`` and means as ``(softmax * bins).sum(-1)``;
* ATen ops only (none of ``sb3_mamba.native``'s C kernels).

``sb3_mamba`` itself only has the optimised path; ``tests/test_equivalence.py``
checks that both give the same losses and gradients on the same inputs.
"""

from __future__ import annotations

import contextlib
from typing import Iterator
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor

import sb3_mamba.distributions as distributions
import sb3_mamba.mamba as mamba
import sb3_mamba.native as native
from sb3_mamba.behavior import ActorCritic, ImaginationStarts, frozen, lambda_returns
from sb3_mamba.distributions import TwoHot
from sb3_mamba.networks import LayerNormGRUCell
from sb3_mamba.rssm import RSSM, State


def multinomial_one_hot(probs: Tensor) -> Tensor:
    """(..., C) probs -> one-hot sample drawn with ``torch.multinomial`` (no gradient)."""
    index = torch.multinomial(probs.detach().reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])
    return F.one_hot(index, probs.shape[-1]).to(probs.dtype)


def plain_observe(self: RSSM, embed: Tensor, action: Tensor, is_first: Tensor, state: State | None = None,
                  sample: bool = True) -> tuple[State, State]:
    """Posterior and prior per step, as in the reference's ``observe`` -> ``obs_step`` -> ``img_step``."""
    post_weight = torch.cat([self.post_deter.weight, self.post_embed.weight], dim=1)  # W [deter, embed]
    posts, priors = [], []
    for t in range(embed.shape[1]):
        if state is None:
            state, act = self.initial(embed.shape[0]), torch.zeros_like(action[:, t])
        else:
            state, act = self._reset(state, action[:, t], is_first[:, t])
        prior = self.img_step(state, act, sample)  # prior logits and a prior sample at every step
        hidden = F.linear(torch.cat([prior["deter"], embed[:, t]], dim=-1), post_weight)
        stoch, logits = self._latent(self.post_net(hidden), sample)
        state = {"deter": prior["deter"], "stoch": stoch, "logits": logits}
        posts.append(state)
        priors.append(prior)
    post = {k: torch.stack([s[k] for s in posts], dim=1) for k in posts[0]}
    prior = {k: torch.stack([s[k] for s in priors], dim=1) for k in ("deter", "logits")}
    return post, prior


def plain_gru(self: LayerNormGRUCell, x: Tensor, h: Tensor, hidden_proj: Tensor | None = None,
              rows: Tensor | None = None) -> Tensor:
    h = h if rows is None else h[rows]
    gates = self.linear(torch.cat([x, h], dim=-1))
    reset, candidate, update = self.norm(gates).split(self.hidden_dim, dim=-1)
    reset = torch.sigmoid(reset)
    candidate = torch.tanh(reset * candidate)
    update = torch.sigmoid(update - 1.0)
    return update * candidate + (1.0 - update) * h


def plain_two_hot_log_prob(self: TwoHot, logits: Tensor, y: Tensor) -> Tensor:
    logits = distributions.full_precision(logits)
    return (self.encode(y.to(logits.dtype)) * F.log_softmax(logits, dim=-1)).sum(-1)


def plain_two_hot_mean(self: TwoHot, logits: Tensor) -> Tensor:
    logits = distributions.full_precision(logits)
    return distributions.symexp((F.softmax(logits, dim=-1) * self.bins(logits)).sum(-1))


def plain_starts(post: dict[str, Tensor], mask: Tensor, num: int | None) -> ImaginationStarts:
    """Gathered start states, one row per start."""
    starts = _optimised_starts(post, mask, num)
    return ImaginationStarts(starts.take(starts.deter), starts.take(starts.stoch))


def reference_lambda_return(reward: Tensor, value: Tensor, pcont: Tensor, bootstrap: Tensor, lam: float) -> Tensor:
    """The reference's lambda-return recursion, written out: inputs r + pcont * v' * (1 - lam), then
    R_t = inputs_t + pcont_t * lam * R_{t+1} from R_T = bootstrap. All (T, N) but bootstrap (N,)."""
    next_value = torch.cat([value[1:], bootstrap[None]])
    inputs = reward + pcont * next_value * (1.0 - lam)
    returns, last = [], bootstrap
    for t in reversed(range(reward.shape[0])):
        last = inputs[t] + pcont[t] * lam * last
        returns.append(last)
    return torch.stack(returns[::-1])


def plain_losses(self: ActorCritic, world_model, start, horizon: int, discount: float, lam: float,
                 entropy: float, slow_reg: float = 1.0):
    """The reference's ``ImagBehavior._train`` semantics on our modules, with its structure.

    The reference's ``imag_horizon`` counts states with the start: ``horizon`` transitions here are
    its ``horizon + 1``, every head runs on all states 0..horizon, the discount is gamma * cont of
    each state, the actor reads detached features, dynamics backpropagation maximises
    (R - v) / S with v keeping its pathwise gradient, REINFORCE uses the unscaled sg(R - v).
    """
    start = ImaginationStarts.of(start)
    with frozen(world_model), frozen(self.critic):
        state = {"deter": start.take(start.deter).detach(), "stoch": start.take(start.stoch).detach()}
        feats, actions = [RSSM.feat(state)], []
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.discrete):
            for _ in range(horizon):  # the reference also draws an action at the last state, unused
                action = self.policy(feats[-1].detach()).sample() if self.discrete else \
                    self.policy(feats[-1].detach()).rsample()
                state = world_model.rssm.img_step(state, action)
                feats.append(RSSM.feat(state))
                actions.append(action)
        feats, actions = torch.stack(feats), torch.stack(actions)  # (h + 1, N, F), (h, N, A)
        reward = world_model.two_hot.mean(world_model.reward_head(feats))  # (h + 1, N), states 0..h
        pcont = discount * torch.sigmoid(world_model.continue_head(feats).squeeze(-1))  # (h + 1, N)
        value = self.two_hot.mean(self.critic(feats))  # (h + 1, N)
        target = reference_lambda_return(reward[1:], value[:-1], pcont[1:], value[-1], lam)  # (h, N)
    weights = torch.cumprod(torch.cat([torch.ones_like(pcont[:1]), pcont[:-1]]), 0).detach()  # (h + 1, N)
    base = value[:-1]
    self.return_norm.update(target)
    offset, scale = self.return_norm.low, self.return_norm.scale()
    policy = self.policy(feats[:-1].detach())
    if self.discrete:
        actor_target = policy.log_prob(actions) * (target - self.two_hot.mean(self.critic(feats[:-1]))).detach()
    else:
        actor_target = (target - offset) / scale - (base - offset) / scale
    actor_entropy = policy.entropy()
    actor_loss = -torch.mean(weights[:-1] * (actor_target + entropy * actor_entropy))
    critic_feat = feats[:-1].detach()
    logits = self.critic(critic_feat)
    slow_target = self.two_hot.mean(self.slow_critic(critic_feat)).detach()
    critic_nll = -self.two_hot.log_prob(logits, target.detach())
    critic_nll = critic_nll - slow_reg * self.two_hot.log_prob(logits, slow_target)
    critic_loss = torch.mean(weights[:-1] * critic_nll)
    metrics = {"actor_loss": actor_loss, "critic_loss": critic_loss, "actor_entropy": actor_entropy.mean(),
               "imag_return": target.mean(), "imag_reward": reward[1:].mean(), "return_scale": scale}
    return actor_loss, critic_loss, metrics


_optimised_starts = mamba._imagination_starts


@contextlib.contextmanager
def plain_update(sampler=multinomial_one_hot) -> Iterator[None]:
    """Run MAMBA's update (and acting) through the plain formulation inside this block."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(RSSM, "observe", plain_observe))
        stack.enter_context(mock.patch.object(ActorCritic, "losses", plain_losses))
        stack.enter_context(mock.patch.object(mamba, "_imagination_starts", plain_starts))
        stack.enter_context(mock.patch.object(distributions, "one_hot_sample", sampler))
        stack.enter_context(mock.patch.object(LayerNormGRUCell, "forward", plain_gru))
        stack.enter_context(mock.patch.object(TwoHot, "log_prob", plain_two_hot_log_prob))
        stack.enter_context(mock.patch.object(TwoHot, "mean", plain_two_hot_mean))
        stack.enter_context(mock.patch.object(native, "posterior_scan_library", lambda: None))  # no C kernels
        yield

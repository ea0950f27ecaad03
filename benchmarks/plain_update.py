"""The plain eager formulation of MAMBA's update, for same-run baselines and equivalence tests.

``with plain_update(model): model.train(n)`` runs the update the way the reference
implementation (dreamerv3-torch) writes it, on the same modules and parameters:

* RSSM observe loop: every step also computes the prior (logits and a sample, as
  ``obs_step`` does in the reference) and the posterior's input layer on
  ``cat([deter, embed])``;
* categorical samples with ``torch.multinomial``;
* imagination from the 8192 gathered start states (no sharing of per-state work),
  the actor re-run for its loss, the critic run twice (targets, loss), each head
  on its own;
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


def plain_losses(self: ActorCritic, world_model, start, horizon: int, discount: float, lam: float,
                 entropy: float, slow_reg: float = 1.0):
    start = ImaginationStarts.of(start)
    with frozen(world_model), frozen(self.critic):
        state = {"deter": start.take(start.deter).detach(), "stoch": start.take(start.stoch).detach()}
        feats, actions = [RSSM.feat(state)], []
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.discrete):
            for _ in range(horizon):
                dist = self.policy(feats[-1].detach() if self.discrete else feats[-1])
                action = dist.sample() if self.discrete else dist.rsample()
                state = world_model.rssm.img_step(state, action)
                feats.append(RSSM.feat(state))
                actions.append(action)
        feats, actions = torch.stack(feats), torch.stack(actions)
        reward = world_model.two_hot.mean(world_model.reward_head(feats[1:]))
        cont = torch.sigmoid(world_model.continue_head(feats[1:]).squeeze(-1))
        value = self.two_hot.mean(self.critic(feats))
        returns = lambda_returns(reward, cont, value, discount, lam)
    weight = torch.cumprod(torch.cat([torch.ones_like(cont[:1]), discount * cont[:-1]]), 0).detach()
    self.return_norm.update(returns)
    scale = self.return_norm.scale()
    dist = self.policy(feats[:-1].detach() if self.discrete else feats[:-1])
    if self.discrete:
        advantage = ((returns - value[:-1]) / scale).detach()
        objective = dist.log_prob(actions) * advantage
    else:
        objective = returns / scale
    actor_entropy = dist.entropy()
    actor_loss = -(weight * (objective + entropy * actor_entropy)).mean()
    critic_feat = feats[:-1].detach()
    logits = self.critic(critic_feat)
    slow_target = self.two_hot.mean(self.slow_critic(critic_feat)).detach()
    critic_nll = -self.two_hot.log_prob(logits, returns.detach())
    critic_nll = critic_nll - slow_reg * self.two_hot.log_prob(logits, slow_target)
    critic_loss = (weight * critic_nll).mean()
    metrics = {"actor_loss": actor_loss, "critic_loss": critic_loss, "actor_entropy": actor_entropy.mean(),
               "imag_return": returns.mean(), "imag_reward": reward.mean(), "return_scale": scale}
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

"""Imagination's fast path: :meth:`ActorCritic.imagine <sb3_mamba.behavior.ActorCritic.imagine>`'s
:class:`~sb3_mamba.behavior.Imagination`, computed with less work.

MAMBA draws ``L_ac`` = 512 starts per sequence with replacement from the H' + 1
posterior states of a prefix, so at H' = 200 the 8192 starts hold only ~2,970
distinct states of the 3,216. Everything that depends on the start state alone (actor and
critic outputs at step 0, the state's half of the first GRU gate layer) is
computed once per distinct state drawn and indexed. On discrete actions nothing
differentiates through the rollout, so the first step runs once per distinct
(start state, action) pair, the features stay factored (:class:`FactoredInput`:
one-hot latent as a gather, shared deterministic states once), the heads that
need no gradient (reward, continuation, slow critic, the last step's critic)
share one first layer per step (:func:`mlp_outputs`), and the critic's gradient
pass covers only the steps of its loss. The GRU runs through
:func:`sb3_mamba.kernels.gru.gru_step` (C kernel, shared states).
``tests/test_kernels.py`` checks values and gradients against the eager path.
Shapes: N starts, M distinct start states, P distinct (state, action) pairs,
h horizon, F features, G one-hot groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sb3_mamba.behavior import ActorCritic, Imagination, ImaginationStarts, frozen
from sb3_mamba.distributions import BoundedNormal, full_precision
from sb3_mamba.kernels.gru import gru_step, project_hidden
from sb3_mamba.rssm import RSSM, State


@dataclass
class FactoredInput:
    """A layer input ``[one_hot, dense[rows]]`` of N rows, kept apart (imagined RSSM features).

    ``hot`` (N, G) holds the column of each of G one-hot groups in the flat ``width``-column
    one-hot vector; ``dense`` (P, D) holds P distinct rows that ``rows`` (N,) indexes (None:
    P = N). :meth:`linear` equals ``F.linear(self.materialize(), weight)``, but the one-hot part
    is a sum of G weight columns (a gather instead of a matmul over mostly zeros) and the dense
    part a matmul over the P distinct rows only.
    """

    hot: Tensor  # (N, G) int64
    dense: Tensor  # (P, D)
    width: int  # one-hot columns (G * classes)
    rows: Tensor | None = None  # (N,) into dense

    def __len__(self) -> int:
        return self.hot.shape[0]

    def linear(self, weight: Tensor) -> Tensor:
        """(out, width + D) weight -> (N, out), no bias."""
        dense_part = F.linear(self.dense, weight[:, self.width :])  # (P, out)
        if self.rows is not None:
            dense_part = dense_part[self.rows]
        hot_weight = weight[:, : self.width]
        if torch.is_grad_enabled() and hot_weight.requires_grad:
            # embedding_bag's weight gradient is a sorted scatter, slower than the matmul's
            return dense_part + F.linear(self._one_hot(), hot_weight)
        # (embedding_bag reads a transposed view as its table far slower than a contiguous copy)
        return dense_part + F.embedding_bag(self.hot, hot_weight.t().contiguous(), mode="sum")

    def _one_hot(self) -> Tensor:
        return self.dense.new_zeros(len(self), self.width).scatter_(1, self.hot, 1.0)

    def materialize(self) -> Tensor:
        """(N, width + D) dense input."""
        return torch.cat([self._one_hot(), self.dense if self.rows is None else self.dense[self.rows]], dim=-1)

    @classmethod
    def cat(cls, inputs: Sequence[FactoredInput]) -> FactoredInput:
        """The rows of several inputs, in order."""
        if len(inputs) == 1:
            return inputs[0]
        rows, offset = [], 0
        for x in inputs:
            rows.append(offset + (torch.arange(len(x), device=x.hot.device) if x.rows is None else x.rows))
            offset += x.dense.shape[0]
        return cls(
            torch.cat([x.hot for x in inputs]), torch.cat([x.dense for x in inputs]), inputs[0].width, torch.cat(rows)
        )


def mlp_outputs(x: Tensor | FactoredInput, mlps: Sequence[nn.Sequential]) -> list[Tensor]:
    """Several :func:`mlp` networks on the same input ``x``, their first layers as one matmul.

    Imagination evaluates up to three heads on the same 8192 x 768 features; one
    GEMM of width 3 x 128 beats three of width 128 (benchmarks/results). A
    :class:`FactoredInput` is read by :meth:`FactoredInput.linear`.
    """
    firsts = [m[0] for m in mlps]
    if not all(isinstance(f, nn.Linear) and f.bias is None for f in firsts):
        x = x.materialize() if isinstance(x, FactoredInput) else x
        return [m(x) for m in mlps]
    linears = [f for f in firsts if isinstance(f, nn.Linear)]  # (all of them, typed)
    if isinstance(x, FactoredInput):
        hidden = x.linear(torch.cat([f.weight for f in linears]) if len(mlps) > 1 else linears[0].weight)
    elif len(mlps) == 1:
        return [mlps[0](x)]
    else:
        hidden = F.linear(x, torch.cat([f.weight for f in linears]))
    return [m[1:](h) for m, h in zip(mlps, hidden.split([f.out_features for f in linears], dim=-1), strict=True)]


def factored_feat(stoch: Tensor, deter: Tensor, rows: Tensor | None = None) -> FactoredInput:
    """(N, S, C) one-hot stoch and (P, D) deter with ``rows`` (N,) -> :meth:`RSSM.feat` of N rows as a
    :class:`FactoredInput` (no gradient to ``stoch``)."""
    num_latents, classes = stoch.shape[-2:]
    offsets = torch.arange(0, num_latents * classes, classes, device=stoch.device)
    return FactoredInput(stoch.argmax(-1) + offsets, deter, num_latents * classes, rows)


def _step_outputs(feats: list[FactoredInput], mlps: list[nn.Sequential], rows: int) -> list[Tensor]:
    """``mlps`` on the features of several steps (first layers shared): (len(feats), rows, out) each."""
    if not feats:
        heads = [mlp[-1] for mlp in mlps]
        return [head.weight.new_zeros(0, rows, head.out_features) for head in heads if isinstance(head, nn.Linear)]
    return [out.unflatten(0, (len(feats), rows)) for out in mlp_outputs(FactoredInput.cat(feats), mlps)]


def _img_step(
    rssm: RSSM,
    state: State,
    action: Tensor,
    deter_proj: Tensor | None = None,
    deter_rows: Tensor | None = None,
    use_c: bool = True,
) -> State:
    """:meth:`RSSM.img_step` with :func:`gru_step`'s shortcuts (``deter_proj``, ``deter_rows``)."""
    # (N, hidden)
    x = rssm.img_in(torch.cat([state["stoch"].flatten(-2), action], dim=-1))
    # (N, D)
    deter = gru_step(rssm.gru, x, state["deter"], deter_proj, deter_rows, use_c)
    stoch, logits = rssm.prior(deter)
    return {"deter": deter, "stoch": stoch, "logits": logits}


def _first_step_per_pair(
    rssm: RSSM, start: ImaginationStarts, deter_proj: Tensor, action: Tensor, project_next: bool, use_c: bool
) -> tuple[State, FactoredInput, Tensor | None, Tensor]:
    """The first imagination step of one-hot ``action`` (N, A) from N starts, without gradients.

    The GRU step, the prior's logits and (if ``project_next``) the next step's
    ``project_hidden`` run once per distinct (start state, action) pair, P <= min(N, M * A)
    rows; the latent is drawn for each start, with the same random numbers as a step over
    all N rows. ``deter_proj`` (M, 3D) is the start states' ``project_hidden``.
    Returns the state (``deter`` (P, D) per pair, ``stoch`` and ``logits`` per start), its
    features, the next step's ``deter_proj`` (P, 3D) or None, and the pair of each start (N,).
    """
    assert start.index is not None
    num_actions = action.shape[-1]
    pairs, pair_of_start = torch.unique(start.index * num_actions + action.argmax(-1), return_inverse=True)
    # (P,)
    state_of_pair = pairs // num_actions
    # (P, A) one-hot
    pair_action = torch.zeros(len(pairs), num_actions, dtype=action.dtype, device=action.device)
    pair_action.scatter_(1, (pairs % num_actions).unsqueeze(1), 1.0)
    # (P, hidden)
    x = rssm.img_in(torch.cat([start.stoch[state_of_pair].flatten(-2), pair_action], dim=-1))
    # (P, D): the start states' deter (M, D) read through state_of_pair
    deter = gru_step(rssm.gru, x, start.deter, deter_proj, state_of_pair, use_c)
    # (P, S * C) logits once per pair, (N, S, C) latents per start
    stoch, logits = rssm._latent(rssm.prior_net(deter)[pair_of_start], sample=True)
    next_proj = project_hidden(rssm.gru, deter) if project_next else None
    state = {"deter": deter, "stoch": stoch, "logits": logits}
    return state, factored_feat(stoch, deter, pair_of_start), next_proj, pair_of_start


def _rollout(
    actor_critic: ActorCritic, rssm: RSSM, start: ImaginationStarts, horizon: int, use_c: bool, sync_free: bool
) -> tuple[Tensor, Tensor | list[FactoredInput], Tensor, Tensor]:
    """The actor in the model for ``horizon`` steps: the start features (M, F) (per distinct state),
    the features of steps 1..h ((h, N, F), or a :class:`FactoredInput` per step for discrete
    actions), the actions (h, N, A) and the actor's outputs at steps 0..h-1 (h, N, out).
    ``sync_free``: no step whose shape depends on the data (the first step per pair)."""
    ac = actor_critic
    deter0, stoch0 = start.deter.detach(), start.stoch.detach()
    # (M, F)
    feat0 = RSSM.feat({"deter": deter0, "stoch": stoch0})
    actor_out = [start.take(ac.actor(feat0))]
    through_model = torch.is_grad_enabled() and not ac.discrete
    # a discrete first action takes one of A values: the first step once per (start state, action) pair
    # (the pairs are found on the host: not sync-free)
    first_step_per_pair = ac.discrete and start.index is not None and not sync_free
    with torch.set_grad_enabled(through_model):
        # (M, 3D)
        start_proj = project_hidden(rssm.gru, deter0)
    deter_proj: Tensor | None = start_proj
    deter_rows = None
    state: State = {}
    if not first_step_per_pair:
        state = {"deter": start.take(deter0), "stoch": start.take(stoch0)}
        deter_proj = start.take(start_proj)
    feats: list[Any] = []
    feat: FactoredInput | Tensor
    actions = []
    for t in range(horizon):
        dist = ac._dist(actor_out[-1])
        with torch.set_grad_enabled(through_model):
            action = dist.rsample() if isinstance(dist, BoundedNormal) and through_model else dist.sample()
            if t == 0 and first_step_per_pair:
                assert deter_proj is not None
                state, feat, deter_proj, deter_rows = _first_step_per_pair(
                    rssm, start, deter_proj, action, project_next=horizon > 1, use_c=use_c
                )
            else:
                state = _img_step(rssm, state, action, deter_proj, deter_rows, use_c)
                deter_proj, deter_rows = None, None
                feat = factored_feat(state["stoch"], state["deter"]) if ac.discrete else RSSM.feat(state)
        feats.append(feat)
        actions.append(action)
        if t < horizon - 1:
            actor_in = feat if isinstance(feat, FactoredInput) else feat.detach()
            actor_out.append(mlp_outputs(actor_in, [ac.actor])[0])
    return feat0, feats if ac.discrete else torch.stack(feats), torch.stack(actions), torch.stack(actor_out)


def imagine(
    actor_critic: ActorCritic,
    world_model: Any,
    start: ImaginationStarts,
    horizon: int,
    use_c: bool = True,
    sync_free: bool = False,
) -> Imagination:
    """:meth:`ActorCritic.imagine <sb3_mamba.behavior.ActorCritic.imagine>`, the same result faster.

    :param use_c: allow the C GRU cell.
    :param sync_free: no shapes that depend on the data, so that a GPU's host never waits for it: per-state
        work for every start state, not only the drawn ones, and the first discrete step per start, not per
        (state, action) pair (the same result). :func:`~sb3_mamba.kernels.select_backend` sets it on every
        device but the CPU.
    """
    ac, two_hot = actor_critic, actor_critic.two_hot
    if start.index is not None and not sync_free:
        # per-state work only for the states drawn: N draws with replacement from M states hit
        # M * (1 - exp(-N / M)) of them (PRN, H' = 300: ~3,900 of 4,816)
        drawn, index = torch.unique(start.index, return_inverse=True)
        start = ImaginationStarts(start.deter[drawn], start.stoch[drawn], index)
    with frozen(world_model):
        feat0, feats, actions, actor_out = _rollout(ac, world_model.rssm, start, horizon, use_c, sync_free)
    reward_head, continue_head = world_model.reward_head, world_model.continue_head
    # (N, bins), the start's (its input carries no gradient)
    critic0 = start.take(ac.critic(feat0))
    with torch.no_grad():
        slow0 = start.take(ac.slow_critic(feat0))
        # (N,)
        start_cont = torch.sigmoid(full_precision(start.take(continue_head(feat0))).squeeze(-1))
    if ac.discrete:
        assert isinstance(feats, list)
        # steps 1..h-1 and step h: the heads without gradients share their first matmul per step
        mid, last = feats[:-1], feats[-1]
        with torch.no_grad():
            reward_mid, cont_mid, slow_mid = _step_outputs(mid, [reward_head, continue_head, ac.slow_critic], len(last))
            reward_last, cont_last, critic_last = mlp_outputs(last, [reward_head, continue_head, ac.critic])
        # (h, N), steps 1..h
        reward = torch.cat([world_model.two_hot.mean(reward_mid), world_model.two_hot.mean(reward_last)[None]])
        cont_logits = torch.cat([cont_mid, cont_last[None]])
        critic_mid = _step_outputs(mid, [ac.critic], len(last))[0]
        # (h, N, bins), steps 0..h-1
        critic_logits = torch.cat([critic0[None], critic_mid])
        # (h + 1, N)
        value = torch.cat([two_hot.mean(critic_logits), two_hot.mean(critic_last)[None]]).detach()
        slow_value = torch.cat([two_hot.mean(slow0)[None], two_hot.mean(slow_mid)])
    else:  # rewards, continuation and values carry the actor's gradient through the features
        assert isinstance(feats, Tensor)
        with frozen(world_model), frozen(ac.critic):
            reward_logits, cont_logits, value_logits = mlp_outputs(feats, [reward_head, continue_head, ac.critic])
        reward = world_model.two_hot.mean(reward_logits)
        value = torch.cat([two_hot.mean(critic0).detach()[None], two_hot.mean(value_logits)])
        critic_logits = torch.cat([critic0[None], ac.critic(feats[:-1].detach())])
        with torch.no_grad():
            slow_value = torch.cat([two_hot.mean(slow0)[None], two_hot.mean(ac.slow_critic(feats[:-1]))])
    cont = torch.sigmoid(full_precision(cont_logits).squeeze(-1))
    return Imagination(
        reward=reward,
        cont=cont,
        start_cont=start_cont,
        value=value,
        critic_logits=critic_logits,
        slow_value=slow_value,
        actor_out=actor_out,
        actions=actions,
    )

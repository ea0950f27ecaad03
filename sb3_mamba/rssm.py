"""Recurrent state-space model with discrete latents (DreamerV3), unrolled over whole meta-episodes.

State: ``deter`` (B, D) GRU state and ``stoch`` (B, S, C) one-hot samples of S
categoricals with C classes. ``feat = [flatten(stoch), deter]`` (B, S*C + D)
is what the heads, actor and critic read.

MAMBA unrolls the posterior over the whole sampled prefix from step 0
(:meth:`RSSM.observe`), so the latent at every step has seen the
meta-episode's history; the state is reset to the learned initial state only
where ``is_first`` is set (a new meta-episode / task), never at sub-episode
boundaries, which the env does not mark as episode starts.

This module is the model's math, step by step, and what the ``"eager"`` backend
trains; :mod:`sb3_mamba.kernels` holds the fast paths of the same computation
(the posterior unroll with a hand-written backward, the C kernels), each checked
against this one. Shapes: see ``docs/shapes.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sb3_mamba.distributions import one_hot_mode, sample_one_hot, unimix_probs
from sb3_mamba.networks import LayerNorm, LayerNormGRUCell, dreamer_init_, fan_avg_normal_, mlp

State = dict[str, Tensor]  # {"deter": (B, D), "stoch": (B, S, C), "logits": (B, S, C)}


class RSSM(nn.Module):
    """:param embed_dim: size of the observation embedding.
    :param action_dim: action vector size (one-hot size for Discrete).
    :param deter: GRU state size (``dyn_deter``, 512).
    :param stoch: number of categorical latents (``dyn_stoch``, MAMBA 16, Dreamer-Vanilla 32).
    :param classes: classes per latent (``dyn_discrete``, MAMBA 16, Dreamer-Vanilla 32).
    :param hidden: width of the MLPs inside the cell (``dyn_hidden``, MAMBA 64, Dreamer-Vanilla 512).
    :param unimix: uniform mixture of the latent categoricals (0.01).
    """

    def __init__(
        self,
        embed_dim: int,
        action_dim: int,
        deter: int = 512,
        stoch: int = 16,
        classes: int = 16,
        hidden: int = 64,
        unimix: float = 0.01,
    ):
        super().__init__()
        self.embed_dim, self.action_dim, self.hidden_dim = embed_dim, action_dim, hidden
        self.deter_dim, self.stoch_dim, self.classes, self.unimix = deter, stoch, classes, unimix
        self.feat_dim = stoch * classes + deter
        self.initial_deter = nn.Parameter(torch.zeros(deter))  # learned initial state (tanh of it)
        self.img_in = mlp(stoch * classes + action_dim, hidden, layers=1)
        self.gru = LayerNormGRUCell(hidden, deter)
        self.prior_net = mlp(deter, hidden, layers=1, out_dim=stoch * classes)
        # posterior input layer split in two: W [deter, embed] = W_d deter + W_e embed
        self.post_deter = nn.Linear(deter, hidden, bias=False)
        self.post_embed = nn.Linear(embed_dim, hidden, bias=False)
        self.post_net = nn.Sequential(LayerNorm(hidden, eps=1e-3), nn.SiLU(), nn.Linear(hidden, stoch * classes))
        # the reference draws its logits layers like hidden ones (``weight_init``, not uniform) and its
        # posterior input layer as one (deter + embed) -> hidden matrix
        dreamer_init_(self.prior_net[-1])
        dreamer_init_(self.post_net)
        for block in (self.post_deter, self.post_embed):
            fan_avg_normal_(block.weight, fan_in=deter + embed_dim)

    # -- single steps ------------------------------------------------------------
    def _latent(self, logits: Tensor, sample: bool) -> tuple[Tensor, Tensor]:
        logits = logits.reshape(*logits.shape[:-1], self.stoch_dim, self.classes)  # (B, S, C)
        probs = unimix_probs(logits, self.unimix)
        if sample:
            stoch = sample_one_hot(probs)
        else:
            stoch = one_hot_mode(probs)
        return stoch, logits

    def initial(self, batch_size: int) -> State:
        deter = torch.tanh(self.initial_deter).unsqueeze(0)  # (1, D), broadcast below
        stoch, logits = self._latent(self.prior_net(deter), sample=False)  # the prior's mode
        return {
            "deter": deter.expand(batch_size, -1),
            "stoch": stoch.expand(batch_size, -1, -1),
            "logits": logits.expand(batch_size, -1, -1),
        }

    def recurrent_step(self, state: State, action: Tensor) -> Tensor:
        """(B, ...) state, (B, A) action -> (B, D) next deterministic state (prior and posterior share it)."""
        # (B, hidden)
        x = self.img_in(torch.cat([state["stoch"].flatten(-2), action], dim=-1))
        # (B, D)
        return self.gru(x, state["deter"])

    def img_step(self, state: State, action: Tensor, sample: bool = True) -> State:
        """Prior step: (B, ...) state, (B, A) action -> next state without an observation."""
        # (B, D)
        deter = self.recurrent_step(state, action)
        # (B, S, C), (B, S, C)
        stoch, logits = self.prior(deter, sample)
        return {"deter": deter, "stoch": stoch, "logits": logits}

    def prior(self, deter: Tensor, sample: bool = True) -> tuple[Tensor, Tensor]:
        """(B, D) deterministic states -> the prior's latent (B, S, C) (a sample or the mode) and logits."""
        return self._latent(self.prior_net(deter), sample)

    def _reset(self, state: State, action: Tensor, is_first: Tensor) -> tuple[State, Tensor]:
        """Replace the state by the initial one (and the action by zeros) where ``is_first``."""
        keep = (~is_first).to(action.dtype).unsqueeze(-1)  # (B, 1)
        initial = self.initial(action.shape[0])
        state = {
            "deter": state["deter"] * keep + initial["deter"] * (1 - keep),
            "stoch": state["stoch"] * keep.unsqueeze(-1) + initial["stoch"] * (1 - keep.unsqueeze(-1)),
        }
        return state, action * keep

    def obs_step(
        self, state: State | None, action: Tensor, embed: Tensor, is_first: Tensor | None, sample: bool = True
    ) -> State:
        """Posterior step: (B, ...) state, (B, A) previous action, (B, E) embedding -> next state.

        ``is_first`` (B,) resets those rows to the initial state (and their action to zeros);
        None means no row starts here. ``state`` None starts every row from the initial state.
        """
        if state is None:
            state, action = self.initial(action.shape[0]), torch.zeros_like(action)
        elif is_first is not None:
            state, action = self._reset(state, action, is_first)
        # (B, D)
        deter = self.recurrent_step(state, action)
        # (B, hidden): the posterior's input layer on [deter, embed], stored as two blocks
        hidden = self.post_deter(deter) + self.post_embed(embed)
        # (B, S, C), (B, S, C)
        stoch, logits = self._latent(self.post_net(hidden), sample)
        return {"deter": deter, "stoch": stoch, "logits": logits}

    # -- sequences ---------------------------------------------------------------
    def observe(
        self, embed: Tensor, action: Tensor, is_first: Tensor, state: State | None = None, sample: bool = True
    ) -> tuple[State, State]:
        """Unroll the posterior over a sequence, one :meth:`obs_step` at a time.

        :param embed: (B, T, E) observation embeddings.
        :param action: (B, T, A) the action that led to step t.
        :param is_first: (B, T) where the state restarts from the initial state.
        :param state: the state before step 0 (None: the initial state).
        :param sample: sample the latents (False: their mode).
        :return: posts (deter, stoch, logits) and priors (deter, logits), fields (B, T, ...).
        """
        posts = []
        for t in range(embed.shape[1]):
            state = self.obs_step(state, action[:, t], embed[:, t], is_first[:, t], sample)
            posts.append(state)
        # (B, T, ...)
        post = {k: torch.stack([s[k] for s in posts], dim=1) for k in posts[0]}
        return post, self.prior_of(post)

    def prior_of(self, post: State) -> State:
        """The prior at the posterior's steps (it only enters the KL): logits for all steps at once."""
        # (B, T, S * C)
        prior_logits = self.prior_net(post["deter"])
        return {"deter": post["deter"], "logits": prior_logits.reshape(post["logits"].shape)}

    @staticmethod
    def feat(state: State) -> Tensor:
        """(..., S, C) stoch and (..., D) deter -> (..., S*C + D)."""
        return torch.cat([state["stoch"].flatten(-2), state["deter"]], dim=-1)

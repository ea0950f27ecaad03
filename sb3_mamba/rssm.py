"""Recurrent state-space model with discrete latents (DreamerV3), unrolled over whole meta-episodes.

State: ``deter`` (B, D) GRU state and ``stoch`` (B, S, C) one-hot samples of S
categoricals with C classes. ``feat = [flatten(stoch), deter]`` (B, S*C + D)
is what the heads, actor and critic read.

MAMBA unrolls the posterior over the whole sampled prefix from step 0
(:meth:`RSSM.observe`), so the latent at every step has seen the
meta-episode's history; the state is reset to the learned initial state only
where ``is_first`` is set (a new meta-episode / task), never at sub-episode
boundaries, which the env does not mark as episode starts.

Per-step Python work is one GRU cell and two small MLPs: the observation half
of the posterior's input layer is computed for all steps at once before the
loop.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sb3_mamba.distributions import one_hot_mode, sample_one_hot, unimix_probs
from sb3_mamba.networks import FactoredInput, LayerNorm, LayerNormGRUCell, dreamer_init_, fan_avg_normal_, mlp
from sb3_mamba.rssm_scan import PosteriorScan, scan_weights

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

    #: run :meth:`observe` through :class:`~sb3_mamba.rssm_scan.PosteriorScan` (False: autograd steps)
    fused_observe: bool = True

    def __init__(self, embed_dim: int, action_dim: int, deter: int = 512, stoch: int = 16, classes: int = 16,
                 hidden: int = 64, unimix: float = 0.01):
        super().__init__()
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

    def deter_step(self, state: State, action: Tensor, deter_proj: Tensor | None = None,
                   deter_rows: Tensor | None = None) -> Tensor:
        """(B, ...) state, (B, A) action -> (B, D) next deterministic state.

        ``deter_proj`` = ``gru.project_hidden(state["deter"])`` when already known. With
        ``deter_rows`` (B,), ``state["deter"]`` and ``deter_proj`` hold distinct states (P, ...)
        that it indexes (imagination's starts share them).
        """
        x = self.img_in(torch.cat([state["stoch"].flatten(-2), action], dim=-1))
        return self.gru(x, state["deter"], deter_proj, deter_rows)

    def img_step(self, state: State, action: Tensor, sample: bool = True, deter_proj: Tensor | None = None,
                 deter_rows: Tensor | None = None) -> State:
        """Prior step: (B, ...) state, (B, A) action -> next state without an observation.

        ``deter_proj`` and ``deter_rows`` as in :meth:`deter_step`.
        """
        deter = self.deter_step(state, action, deter_proj, deter_rows)
        stoch, logits = self.prior(deter, sample)
        return {"deter": deter, "stoch": stoch, "logits": logits}

    def prior(self, deter: Tensor, sample: bool = True, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, D) deterministic states -> the prior's latent (B, S, C) (a sample or the mode) and logits.

        With ``rows`` (N,) indexing the B states, the logits are computed once per state and
        the latent is drawn for each of the N rows: (N, S, C).
        """
        logits = self.prior_net(deter)
        return self._latent(logits if rows is None else logits[rows], sample)

    def _reset(self, state: State, action: Tensor, is_first: Tensor) -> tuple[State, Tensor]:
        """Replace the state by the initial one (and the action by zeros) where ``is_first``."""
        keep = (~is_first).to(action.dtype).unsqueeze(-1)  # (B, 1)
        initial = self.initial(action.shape[0])
        state = {
            "deter": state["deter"] * keep + initial["deter"] * (1 - keep),
            "stoch": state["stoch"] * keep.unsqueeze(-1) + initial["stoch"] * (1 - keep.unsqueeze(-1)),
        }
        return state, action * keep

    def obs_step(self, state: State | None, action: Tensor, embed_proj: Tensor, is_first: Tensor | None,
                 sample: bool = True) -> State:
        """Posterior step for one time step (the prior's latent is not needed here, see :meth:`observe`).

        ``embed_proj`` is ``post_embed(embed)`` (B, hidden), see :meth:`project_embed`.
        ``is_first`` (B,) resets those rows; None means no row starts here.
        """
        if state is None:
            state, action = self.initial(action.shape[0]), torch.zeros_like(action)
        elif is_first is not None:
            state, action = self._reset(state, action, is_first)
        deter = self.deter_step(state, action)
        stoch, logits = self._latent(self.post_net(self.post_deter(deter) + embed_proj), sample)
        return {"deter": deter, "stoch": stoch, "logits": logits}

    def project_embed(self, embed: Tensor) -> Tensor:
        """(..., E) -> (..., hidden): the observation half of the posterior input, for all steps at once."""
        return self.post_embed(embed)

    # -- sequences ---------------------------------------------------------------
    def observe(self, embed: Tensor, action: Tensor, is_first: Tensor, state: State | None = None,
                sample: bool = True) -> tuple[State, State]:
        """Unroll the posterior over a sequence from the initial state.

        embed (B, T, E), action (B, T, A) (the action that led to step t),
        is_first (B, T) -> posts (deter, stoch, logits) and priors (deter, logits), fields (B, T, ...).
        Runs :class:`~sb3_mamba.rssm_scan.PosteriorScan` (hand-written backward); the same
        computation through autograd, step by step, is :meth:`observe_steps` (used when
        ``state`` is given or ``fused_observe`` is False).
        """
        if state is not None or not self.fused_observe:
            return self.observe_steps(embed, action, is_first, state, sample)
        device = embed.device.type
        compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
        initial = self.initial(1)
        keep = ~is_first.T.bool()  # (T, B)
        keep[0] = False  # the unroll starts from the initial state
        deter, stoch, logits = PosteriorScan.apply(
            self, sample, compute_dtype, self.project_embed(embed).float().transpose(0, 1), action.transpose(0, 1),
            keep, initial["deter"][0], initial["stoch"][0].flatten().detach(), *scan_weights(self),
        )
        post = {"deter": deter.transpose(0, 1), "stoch": stoch.transpose(0, 1), "logits": logits.transpose(0, 1)}
        return post, self._prior(post)

    def observe_steps(self, embed: Tensor, action: Tensor, is_first: Tensor, state: State | None = None,
                      sample: bool = True) -> tuple[State, State]:
        """:meth:`observe` through autograd, one :meth:`obs_step` at a time (from ``state`` if given)."""
        embed_proj = self.project_embed(embed)  # (B, T, hidden), one matmul for all steps
        any_first = is_first.any(0).tolist()  # one host sync instead of a reset blend at every step
        posts = []
        for t in range(embed.shape[1]):
            first = is_first[:, t] if any_first[t] else None
            state = self.obs_step(state, action[:, t], embed_proj[:, t], first, sample)
            posts.append(state)
        post = {k: torch.stack([s[k] for s in posts], dim=1) for k in posts[0]}
        return post, self._prior(post)

    def _prior(self, post: State) -> State:
        # The prior only enters the KL: its logits for all steps in one batched call after the loop.
        prior_logits = self.prior_net(post["deter"])
        return {"deter": post["deter"], "logits": prior_logits.reshape(post["logits"].shape)}

    @staticmethod
    def feat(state: State) -> Tensor:
        """(..., S, C) stoch and (..., D) deter -> (..., S*C + D)."""
        return torch.cat([state["stoch"].flatten(-2), state["deter"]], dim=-1)

    @staticmethod
    def factored_feat(stoch: Tensor, deter: Tensor, rows: Tensor | None = None) -> FactoredInput:
        """(N, S, C) one-hot stoch and (P, D) deter with ``rows`` (N,) -> :meth:`feat` of N rows as a
        :class:`~sb3_mamba.networks.FactoredInput` (no gradient to ``stoch``)."""
        num_latents, classes = stoch.shape[-2:]
        offsets = torch.arange(0, num_latents * classes, classes, device=stoch.device)
        return FactoredInput(stoch.argmax(-1) + offsets, deter, num_latents * classes, rows)

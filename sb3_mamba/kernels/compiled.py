"""The ``"compile"`` backend: the eager math through ``torch.compile``, nothing restated.

The posterior step is :meth:`RSSM.obs_step <sb3_mamba.rssm.RSSM.obs_step>` and imagination is
:meth:`ActorCritic.imagine <sb3_mamba.behavior.ActorCritic.imagine>`, compiled (inductor: fused
C++/OpenMP loops on CPU, Triton on GPU; ``mode="reduce-overhead"`` adds CUDA graphs on GPU).

* The unroll over the sampled prefix stays a Python loop around one compiled step, so H'
  (which grows with the world-model horizon schedule) never enters a compiled graph: a new
  H' does not recompile.
* Imagination is compiled on the gathered starts, N = batch x L_ac rows whatever H' is.
* Random draws: inductor generates its own random numbers unless
  ``torch._inductor.config.fallback_random`` is set, so samples differ from the eager
  backend's for the same seed (same distribution); ``tests/test_kernels.py`` sets it to
  compare values exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sb3_mamba.behavior import ActorCritic, Imagination, ImaginationStarts
from sb3_mamba.rssm import RSSM, State


@functools.cache
def _compiled(function: Callable[..., Any], device_type: str) -> Callable[..., Any]:
    mode = "reduce-overhead" if device_type == "cuda" else None
    return torch.compile(function, mode=mode, dynamic=False)


def observe(rssm: RSSM, embed: Tensor, action: Tensor, is_first: Tensor, sample: bool = True) -> tuple[State, State]:
    """:meth:`RSSM.observe <sb3_mamba.rssm.RSSM.observe>` with each :meth:`~sb3_mamba.rssm.RSSM.obs_step`
    compiled (the reset blend applied at every step, so every step is one graph)."""
    obs_step = _compiled(RSSM.obs_step, embed.device.type)
    state: State | None = None
    posts = []
    for t in range(embed.shape[1]):
        state = obs_step(rssm, state, action[:, t], embed[:, t], is_first[:, t], sample)
        posts.append(state)
    # (B, T, ...)
    post = {k: torch.stack([s[k] for s in posts], dim=1) for k in posts[0]}
    return post, rssm.prior_of(post)


def imagine(actor_critic: ActorCritic, world_model: Any, start: ImaginationStarts, horizon: int) -> Imagination:
    """:meth:`ActorCritic.imagine <sb3_mamba.behavior.ActorCritic.imagine>` compiled, on gathered starts."""
    gathered = ImaginationStarts(start.take(start.deter), start.take(start.stoch))
    return _compiled(ActorCritic.imagine, start.deter.device.type)(actor_critic, world_model, gathered, horizon)


def backend() -> Any:
    from sb3_mamba.kernels import Backend

    return Backend(
        "compile", observe=observe, imagine=imagine, detail="torch.compile of the eager posterior step and imagination"
    )

"""Fast paths of MAMBA's update behind one switch: ``MAMBA(..., backend=...)``.

The math lives in :mod:`sb3_mamba.rssm`, :mod:`sb3_mamba.world_model` and
:mod:`sb3_mamba.behavior`; that is the ``"eager"`` backend. The others compute
the same update faster, each checked against eager by ``tests/test_kernels.py``
(values and gradients):

``"native"``
    The posterior unroll as one autograd Function with a hand-written backward
    (:mod:`~sb3_mamba.kernels.posterior_scan`), its per-step work in C on CPU
    (:mod:`~sb3_mamba.kernels.native`, built on first use; ATen ops on GPU or
    without a compiler); imagination with shared start states and factored
    features (:mod:`~sb3_mamba.kernels.imagination`), the GRU cell in C
    (:mod:`~sb3_mamba.kernels.gru`); the reconstruction window's first layers factored
    (:mod:`~sb3_mamba.kernels.window`); wide heads padded to a multiple of 8
    columns (:mod:`~sb3_mamba.kernels.layers`).
``"compile"``
    The eager step functions through ``torch.compile``
    (:mod:`~sb3_mamba.kernels.compiled`): no hand-written code, any device.
``"auto"``
    ``"native"``, with each C++ kernel only where it beats ATen on this machine and at
    this model's sizes, by a short measurement at first use, cached
    (:mod:`~sb3_mamba.kernels.selection`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sb3_mamba.behavior import ActorCritic, Imagination, ImaginationStarts
from sb3_mamba.kernels import native
from sb3_mamba.rssm import RSSM, State

BACKENDS = ("auto", "eager", "native", "compile")


@dataclasses.dataclass(frozen=True)
class Backend:
    """How the update computes: the eager modules, or a fast path of the same math.

    :param name: one of :data:`BACKENDS` but ``"auto"``.
    :param observe: ``(rssm, embed, action, is_first) -> (post, prior)`` for the world-model loss
        (None: :meth:`RSSM.observe <sb3_mamba.rssm.RSSM.observe>`).
    :param imagine: ``(actor_critic, world_model, start, horizon) -> Imagination`` for the
        actor-critic losses (None: :meth:`ActorCritic.imagine <sb3_mamba.behavior.ActorCritic.imagine>`).
    :param window_outputs: ``(heads, feat_l, embed, embed_step) -> outputs`` for the reconstruction window's heads
        (None: :func:`~sb3_mamba.world_model.window_outputs`).
    :param prepare: applied once to the policy's modules (parameters unchanged).
    :param detail: what runs, for the log.
    """

    name: str
    observe: Callable[[RSSM, torch.Tensor, torch.Tensor, torch.Tensor], tuple[State, State]] | None = None
    imagine: Callable[[ActorCritic, Any, ImaginationStarts, int], Imagination] | None = None
    window_outputs: Callable[..., list[torch.Tensor]] | None = None
    prepare: Callable[[nn.Module], None] | None = None
    detail: str = ""


def select_backend(
    name: str, device: torch.device | str = "cpu", rssm: RSSM | None = None, batch_size: int = 16
) -> Backend:
    """The :class:`Backend` called ``name`` (one of :data:`BACKENDS`) for ``device``.

    :param rssm: the model's RSSM, for ``"auto"`` to measure its kernels at its sizes (None: no
        measurement, the C++ kernels wherever they build, as ``"native"``).
    :param batch_size: sequences per update (``"auto"``'s measurement).
    :raises ValueError: for an unknown name.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}.")
    device = torch.device(device)
    if name == "eager":
        return Backend("eager", detail="the eager modules (sb3_mamba.rssm, sb3_mamba.behavior)")
    if name == "compile":
        from sb3_mamba.kernels import compiled

        return compiled.backend()
    # "auto" and "native"
    from sb3_mamba.kernels import imagination, layers, posterior_scan, selection, window

    uses_c = device.type == "cpu" and native.posterior_scan_library() is not None
    if name == "auto" and uses_c and rssm is not None:
        choice = selection.choose(rssm, batch_size)
        return Backend(
            "native",
            observe=functools.partial(posterior_scan.observe, use_c=choice.scan_c),
            imagine=functools.partial(imagination.imagine, use_c=choice.gru_c),
            window_outputs=window.window_outputs,
            prepare=layers.pad_wide_heads,
            detail="fused posterior unroll and imagination; measured here: " + choice.describe(),
        )
    # on a GPU, no shortcut that reads values on the host (the host would wait for the device there)
    sync_free = device.type != "cpu"
    return Backend(
        "native",
        observe=functools.partial(posterior_scan.observe, use_c=uses_c, sync_free=sync_free),
        imagine=functools.partial(imagination.imagine, use_c=uses_c, sync_free=sync_free),
        window_outputs=functools.partial(window.window_outputs, sync_free=sync_free),
        prepare=layers.pad_wide_heads,
        detail="fused posterior unroll and imagination, " + ("C kernels" if uses_c else "ATen ops (no C kernels)"),
    )


__all__ = ["BACKENDS", "Backend", "select_backend"]

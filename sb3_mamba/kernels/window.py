"""The reconstruction window's fast path: :func:`~sb3_mamba.world_model.window_outputs` with less work.

Every window head reads ``[features of sampled index j mod L, embedding of window step j]``
for the B x L x W window entries (:func:`~sb3_mamba.world_model.window_outputs`). Its first
layer is linear, so it splits into a features' half and an embedding's half: the features'
half is computed once per sampled index (L rows per sequence instead of L x W) and tiled,
the embedding's half once per distinct step the windows read (64 indices with
replacement and 3 offsets read ~124 of a sequence's 201 steps, not 192), and all
heads' first layers run as one matmul of their stacked weights. At the paper's sizes
(F = 768, E = 512, W = 3) this removes about 55% of the first layers' multiply-adds in
the forward and in both halves of the backward. ``tests/test_kernels.py`` checks values and
gradients against the eager path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sb3_mamba.world_model import ConvDecoder
from sb3_mamba.world_model import window_outputs as eager_window_outputs


def split_first_layer(head: nn.Module) -> tuple[nn.Linear, Callable[[Tensor], Tensor]] | None:
    """A head as (its first, linear layer; the rest of it), or None for a head of another shape."""
    if isinstance(head, nn.Sequential) and isinstance(head[0], nn.Linear):
        return head[0], head[1:]
    if isinstance(head, ConvDecoder):
        return head.project, head.from_projection
    return None


def window_outputs(
    heads: Iterable[nn.Module], feat_l: Tensor, embed: Tensor, embed_step: Tensor, sync_free: bool = False
) -> list[Tensor]:
    """:func:`~sb3_mamba.world_model.window_outputs`: feat_l (B, L, F), embed (B, T, E), embed_step
    (B, L * W) -> each head's output, the first layers factored and stacked (module docstring).

    :param sync_free: no shapes that depend on the data, so that a GPU's host never waits for it: the
        embedding's half per window entry, not per distinct step (the same result).
        :func:`~sb3_mamba.kernels.select_backend` sets it on every device but the CPU.
    """
    heads = list(heads)
    splits = [split_first_layer(head) for head in heads]
    if not heads or any(split is None for split in splits):
        return eager_window_outputs(heads, feat_l, embed, embed_step)
    firsts = [split[0] for split in splits if split is not None]
    (batch, steps), feat_dim = embed.shape[:2], feat_l.shape[-1]
    window = embed_step.shape[1] // feat_l.shape[1]
    feat_weight = torch.cat([first.weight[:, :feat_dim] for first in firsts])  # (O, F)
    embed_weight = torch.cat([first.weight[:, feat_dim:] for first in firsts])  # (O, E)
    # (B, L, O): once per sampled index
    feat_part = F.linear(feat_l, feat_weight)
    # (B, L * W) the (sequence, step) pair of each window entry, as a row of (B * T, E)
    entry_step = embed_step + steps * torch.arange(batch, device=embed.device)[:, None]
    if sync_free:
        # (B, L * W, O): per window entry
        embed_part = F.linear(embed.flatten(0, 1)[entry_step], embed_weight)
    else:
        # (D,) the distinct pairs the windows read, D <= B * L * W
        drawn, entry_of = torch.unique(entry_step, return_inverse=True)
        # (B, L * W, O): once per distinct step, then read per window entry
        embed_part = F.linear(embed.flatten(0, 1)[drawn], embed_weight)[entry_of]
    # entry j reads sampled index j mod L, as the tiled features do
    hidden = feat_part.repeat(1, window, 1) + embed_part
    outputs = []
    for split, part in zip(splits, hidden.split([first.out_features for first in firsts], dim=-1), strict=True):
        first, rest = split  # type: ignore[misc]
        outputs.append(rest(part if first.bias is None else part + first.bias))
    return outputs

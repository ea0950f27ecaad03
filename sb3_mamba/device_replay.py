"""The replay's meta-episodes in device memory, where each update's batch is gathered.

Gathered on the host, a batch is copied to the GPU at every update, and PyTorch's copy from
pageable memory waits until the device has finished the work queued before it: the host
cannot queue the next update while the device computes this one. :class:`DeviceReplay`
copies each meta-episode to the device once, when it is first sampled from, and gathers
batches there; only the (episode, start) pairs drawn on the host travel, 2 x B integers,
from pinned memory without waiting.

It follows a :class:`~sb3_mamba.buffers.MetaEpisodeBuffer`, which stays the record (what is
saved, what the draws index): :meth:`DeviceReplay.update` copies the meta-episodes stored
since its last call and forgets the ones the buffer dropped. The entries sit in one ring per
field, grown by doubling up to the buffer's capacity; the buffer keeps at most its capacity
(or a single longer meta-episode), so the kept entries never overlap in the ring.
:meth:`DeviceReplay.gather` returns what :meth:`MetaEpisodeBuffer.gather
<sb3_mamba.buffers.MetaEpisodeBuffer.gather>` returns, as tensors (``tests/test_buffers.py``).
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sb3_mamba.buffers import MetaEpisodeBuffer

#: the per-step fields of a stored meta-episode besides its observation
FIELDS = ("action", "reward", "terminated")


class DeviceReplay:
    """A copy of a :class:`~sb3_mamba.buffers.MetaEpisodeBuffer`'s stored meta-episodes on ``device``.

    :param device: where the copy lives and batches are gathered.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.buffer: MetaEpisodeBuffer | None = None
        #: field -> (R, ...) ring of entries; a ``Dict`` observation's keys as ``obs/<key>``
        self.rings: dict[str, Tensor] = {}
        #: (ring position of entry 0, length) of each copied meta-episode, in the buffer's order
        self.episodes: deque[tuple[int, int]] = deque()
        self.head = 0  # where the next entry goes
        self.copied = 0  # the buffer's ``num_episodes_added`` when last updated

    @property
    def ring_size(self) -> int:
        return len(self.rings["reward"]) if self.rings else 0

    def _to_device(self, array: np.ndarray) -> Tensor:
        """``array`` on the device; to a GPU from pinned memory, so the host does not wait for the device."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def update(self, buffer: MetaEpisodeBuffer) -> None:
        """Copy the meta-episodes ``buffer`` stored since the last call; forget those it dropped."""
        if buffer is not self.buffer:  # a new (or loaded) buffer: start over
            self.buffer, self.rings, self.episodes, self.head = buffer, {}, deque(), 0
            self.copied = buffer.num_episodes_added - len(buffer.episodes)  # (all it holds is new)
        # stored since the last call and still held (more may have come and gone in between)
        new = min(buffer.num_episodes_added - self.copied, len(buffer.episodes))
        dropped = len(self.episodes) + new - len(buffer.episodes)
        if not 0 <= dropped <= len(self.episodes):
            raise RuntimeError(
                f"The device replay lost track of its buffer ({len(self.episodes)} meta-episodes copied, "
                f"{new} new, {len(buffer.episodes)} held)."
            )
        for _ in range(dropped):
            self.episodes.popleft()
        fresh = list(itertools.islice(buffer.episodes, len(buffer.episodes) - new, None))
        needed = sum(length for _, length in self.episodes) + sum(len(ep["reward"]) for ep in fresh)
        if needed > self.ring_size:
            self._grow(fresh[0] if fresh else buffer.episodes[0], needed, max(buffer.capacity, needed))
        for episode in fresh:
            self._write(episode)
        self.copied = buffer.num_episodes_added

    def _grow(self, example: dict[str, Any], needed: int, most: int) -> None:
        """Rings of ``max(needed, 2 x the current size)`` entries, at most ``most``, the kept entries first."""
        size = min(max(needed, 2 * self.ring_size), most)
        if not self.rings:
            arrays = {**_observation_fields(example["obs"]), **{name: example[name] for name in FIELDS}}
            self.rings = {
                name: torch.zeros((size, *array.shape[1:]), dtype=torch.from_numpy(array[:0]).dtype, device=self.device)
                for name, array in arrays.items()
            }
            return
        # (K,) the kept entries' positions, oldest first
        kept = (
            torch.cat(
                [torch.arange(start, start + length, device=self.device) for start, length in self.episodes]
                or [torch.zeros(0, dtype=torch.long, device=self.device)]
            )
            % self.ring_size
        )
        grown = {}
        for name, ring in self.rings.items():
            grown[name] = ring.new_zeros((size, *ring.shape[1:]))
            grown[name][: len(kept)] = ring[kept]
        self.rings = grown
        positions = np.cumsum([0] + [length for _, length in self.episodes])
        self.episodes = deque((int(p), length) for p, (_, length) in zip(positions, self.episodes, strict=False))
        self.head = len(kept)

    def _write(self, episode: dict[str, Any]) -> None:
        length = len(episode["reward"])
        # (n,) ring positions, wrapping past the end
        positions = (self.head + torch.arange(length, device=self.device)) % self.ring_size
        arrays = {**_observation_fields(episode["obs"]), **{name: episode[name] for name in FIELDS}}
        for name, array in arrays.items():
            self.rings[name].index_copy_(0, positions, self._to_device(array))
        self.episodes.append((self.head, length))
        self.head = (self.head + length) % self.ring_size

    def gather(self, picks: list[tuple[int, int]], length: int) -> dict[str, Any]:
        """The batch of ``length`` entries from (episode index, start) ``picks`` (indices into the buffer's
        meta-episodes), zero-padded: ``obs`` (a dict for ``Dict`` observations), ``action``, ``reward``,
        ``terminated``, ``is_first`` and ``mask``, each (B, L, ...) on the device."""
        rows = np.array([(self.episodes[i][0] + start, self.episodes[i][1] - start) for i, start in picks])
        # (B, 2): ring position of each row's first entry, entries left in its meta-episode
        first_and_left = self._to_device(rows.astype(np.int64))
        steps = torch.arange(length, device=self.device)
        # (B, L)
        mask = steps < first_and_left[:, 1:]
        # (B, L)
        positions = (first_and_left[:, :1] + steps) % self.ring_size
        fields = {}
        for name, ring in self.rings.items():
            # (B, L, ...)
            values = ring[positions]
            fields[name] = torch.where(mask.view(*mask.shape, *[1] * (values.dim() - 2)), values, values.new_zeros(()))
        obs_keys = [name for name in fields if name.startswith("obs/")]
        obs = {name.partition("/")[2]: fields.pop(name) for name in obs_keys} if obs_keys else fields.pop("obs")
        is_first = torch.zeros_like(mask)
        is_first[:, 0] = True
        return {"obs": obs, **fields, "is_first": is_first, "mask": mask}


def _observation_fields(obs: Any) -> dict[str, np.ndarray]:
    """A stored observation array (or dict of them) as ring fields."""
    return {f"obs/{key}": value for key, value in obs.items()} if isinstance(obs, dict) else {"obs": obs}

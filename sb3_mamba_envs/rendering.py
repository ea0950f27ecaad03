"""A tiny RGB canvas for the 2-D continuous envs (point robot, escape room).

Only what those envs draw: filled discs, rings/arcs and trails of points,
in world coordinates. Pure NumPy, so rendering needs no display, no OpenGL
and no extra dependency.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Trail colours of sub-episodes 0, 1, 2, ... (red, green, blue as in the paper's Fig. 1).
SUB_EPISODE_COLORS: tuple[tuple[int, int, int], ...] = (
    (220, 40, 40),
    (40, 170, 40),
    (40, 80, 220),
    (160, 60, 200),
    (230, 160, 20),
    (120, 120, 120),
)


def sub_episode_color(index: int) -> tuple[int, int, int]:
    return SUB_EPISODE_COLORS[index % len(SUB_EPISODE_COLORS)]


class Canvas:
    """An ``(size, size, 3)`` uint8 image showing the world box ``[x0, x1] x [y0, y1]`` (y up)."""

    def __init__(self, size: int, extent: tuple[float, float, float, float], background=(255, 255, 255)):
        self.size = size
        self.x0, self.x1, self.y0, self.y1 = extent
        self.image = np.empty((size, size, 3), dtype=np.uint8)
        self.image[:] = background
        # world coordinates of every pixel centre, computed once per canvas
        cols = self.x0 + (np.arange(size) + 0.5) / size * (self.x1 - self.x0)
        rows = self.y1 - (np.arange(size) + 0.5) / size * (self.y1 - self.y0)
        self._wx, self._wy = np.meshgrid(cols, rows)

    def _paint(self, mask: np.ndarray, color: Sequence[int]) -> None:
        self.image[mask] = color

    def disc(self, center: Sequence[float], radius: float, color: Sequence[int]) -> None:
        # only touch the pixel box around the disc: trails draw hundreds of them
        sx = self.size / (self.x1 - self.x0)
        sy = self.size / (self.y1 - self.y0)
        c0 = max(int((center[0] - radius - self.x0) * sx), 0)
        c1 = min(int((center[0] + radius - self.x0) * sx) + 2, self.size)
        r0 = max(int((self.y1 - center[1] - radius) * sy), 0)
        r1 = min(int((self.y1 - center[1] + radius) * sy) + 2, self.size)
        if c0 >= c1 or r0 >= r1:
            return
        wx, wy = self._wx[r0:r1, c0:c1], self._wy[r0:r1, c0:c1]
        mask = (wx - center[0]) ** 2 + (wy - center[1]) ** 2 <= radius**2
        self.image[r0:r1, c0:c1][mask] = color

    def ring(
        self,
        radius: float,
        width: float,
        color: Sequence[int],
        angle_range: tuple[float, float] | None = None,
        center: Sequence[float] = (0.0, 0.0),
    ) -> None:
        """A ring of ``radius`` (optionally only the arc ``angle_range``, radians)."""
        dx, dy = self._wx - center[0], self._wy - center[1]
        mask = np.abs(np.hypot(dx, dy) - radius) <= width / 2
        if angle_range is not None:
            lo, hi = angle_range
            angle = np.arctan2(dy, dx)
            # angular distance to the arc's centre handles arcs across +-pi
            mid, half = (lo + hi) / 2, (hi - lo) / 2
            mask &= np.abs((angle - mid + np.pi) % (2 * np.pi) - np.pi) <= half
        self._paint(mask, color)

    def trail(self, points: np.ndarray, radius: float, color: Sequence[int]) -> None:
        for p in points:
            self.disc(p, radius, color)

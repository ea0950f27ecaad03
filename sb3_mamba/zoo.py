"""Run MAMBA and its Dreamer presets through RL-Zoo (``rl_zoo3``) next to the zoo's own algorithms.

rl_zoo3 has no plugin entry point for algorithms: ``rl_zoo3.utils.ALGOS`` is a
plain dict read when ``train``/``enjoy`` run. This module adds ``mamba``,
``dreamer_tune`` and ``dreamer_vanilla`` to it and then hands over to the zoo,
with two defaults the zoo lacks: our ``hyperparams/<algo>.yml`` as
``--conf-file`` and ``--gym-packages sb3_mamba_envs``.

    python -m sb3_mamba.zoo train --algo mamba --env MetaRooms-3-v0 -f logs/ --eval-freq 10000
    python -m sb3_mamba.zoo train --algo ppo_lstm --env MetaRooms-3-v0 -f logs/      # RL^2 baseline
    python -m sb3_mamba.zoo enjoy --algo mamba --env MetaRooms-3-v0 -f logs/ --no-render
    sb3-mamba-zoo train ...                                                          # same, console script

Everything else (flags, log folders, ``-params`` overrides, Optuna's
``--storage``) is rl_zoo3's own.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sb3_mamba.mamba import MAMBA

#: where the YAML files live in a source checkout (the repository's top-level hyperparams/)
HYPERPARAMS_DIR = Path(__file__).resolve().parents[1] / "hyperparams"


class DreamerTune(MAMBA):
    """MAMBA's implementation with ``preset="dreamer_tune"`` (plain DreamerV3 with MAMBA's sizes)."""

    def __init__(self, *args: Any, preset: str = "dreamer_tune", **kwargs: Any):
        super().__init__(*args, preset=preset, **kwargs)


class DreamerVanilla(MAMBA):
    """MAMBA's implementation with ``preset="dreamer_vanilla"`` (plain DreamerV3 with its own sizes)."""

    def __init__(self, *args: Any, preset: str = "dreamer_vanilla", **kwargs: Any):
        super().__init__(*args, preset=preset, **kwargs)


ZOO_ALGOS: dict[str, type[MAMBA]] = {"mamba": MAMBA, "dreamer_tune": DreamerTune, "dreamer_vanilla": DreamerVanilla}


def register() -> None:
    """Add our algorithms to rl_zoo3's ``ALGOS`` (idempotent)."""
    from rl_zoo3 import utils

    utils.ALGOS.update(ZOO_ALGOS)


def _with_defaults(argv: list[str]) -> list[str]:
    """Add ``--gym-packages sb3_mamba_envs`` and our ``--conf-file`` unless given."""
    argv = list(argv)
    if "--gym-packages" not in argv:
        argv += ["--gym-packages", "sb3_mamba_envs"]
    if "--conf-file" not in argv and "-conf" not in argv and "--algo" in argv:
        algo = argv[argv.index("--algo") + 1]
        conf = HYPERPARAMS_DIR / f"{algo}.yml"
        if conf.is_file():
            argv += ["--conf-file", str(conf)]
    return argv


def main(argv: list[str] | None = None) -> None:
    """``sb3-mamba-zoo {train,enjoy} [rl_zoo3 flags]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = ("train", "enjoy")
    if not argv or argv[0] not in commands:
        raise SystemExit(f"usage: sb3-mamba-zoo {{{','.join(commands)}}} [rl_zoo3 flags]\n\n{__doc__}")
    command, rest = argv[0], argv[1:]
    register()
    if command == "train":
        from rl_zoo3.train import train

        sys.argv = ["rl_zoo3.train", *_with_defaults(rest)]
        train()
    else:
        from rl_zoo3.enjoy import enjoy

        rest = rest if "--gym-packages" in rest else [*rest, "--gym-packages", "sb3_mamba_envs"]
        sys.argv = ["rl_zoo3.enjoy", *rest]
        enjoy()


if __name__ == "__main__":
    main()

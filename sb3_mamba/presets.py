"""MAMBA and the paper's two Dreamer baselines as presets (paper Table 2, App. D).

``MAMBA(..., preset="dreamer_tune")`` changes only what the preset names;
every other argument keeps its default, and an explicit argument always wins.

* ``mamba``: whole meta-episodes from step 0 cut to H', losses at L sampled
  indices, world-model horizon schedule; Dreamer-Tune sizes.
* ``dreamer_tune``: plain DreamerV3 (64-step windows from random starts, no
  schedule, losses at every step) with MAMBA's sizes.
* ``dreamer_vanilla``: plain DreamerV3 with DreamerV3's sizes.

All three see the same augmented observation ``[o, r, t/H]``.
"""

from __future__ import annotations

from typing import Any

_DREAMER_SAMPLING: dict[str, Any] = {
    "sampling": "window",
    "batch_length": 64,
    "wm_indices": None,
    "ac_indices": None,
    "wm_horizon_initial": None,
}

#: Dreamer-Tune's sizes (paper Table 2), which MAMBA shares: the two differ only in the algorithm.
#: ``imag_horizon`` counts imagined transitions; the reference's ``imag_horizon: h`` counts states with
#: the start and trains on h - 1 of them, so the paper's 10 (MAMBA) and 15 (DreamerV3) are 9 and 14 here.
_TUNE_SIZES: dict[str, Any] = {
    "units": 128,
    "dyn_deter": 512,
    "dyn_stoch": 16,
    "dyn_discrete": 16,
    "dyn_hidden": 64,
    "imag_horizon": 9,
}

PRESETS: dict[str, dict[str, Any]] = {
    "mamba": {
        **_TUNE_SIZES,
        "sampling": "prefix",
        "wm_indices": 64,
        "ac_indices": 512,
        "wm_horizon_initial": 50,
    },
    "dreamer_tune": {**_DREAMER_SAMPLING, **_TUNE_SIZES},
    "dreamer_vanilla": {
        **_DREAMER_SAMPLING,
        "units": 512,
        "dyn_deter": 512,
        "dyn_stoch": 32,
        "dyn_discrete": 32,
        "dyn_hidden": 512,
        "imag_horizon": 14,
    },
}


def resolve_preset(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The preset's values with every non-None entry of ``overrides`` on top."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
    settings = dict(PRESETS[preset])
    settings.update({key: value for key, value in overrides.items() if value is not None})
    return settings


#: CPU-sized MAMBA settings that learn small meta-RL envs (e.g. Rooms-1 with T = 10) within a few
#: thousand env steps / minutes on a 2-core CPU: a small world model (deter 128), many updates per
#: env step, short imagination and higher learning rates. Used by the README's main command and the
#: learning test; not a setting of the paper. Chosen by benchmarks/learning_sweep.py (Rooms-1, T=10,
#: 4000 env steps, 3 seeds, deterministic return over 50 tasks): actor/critic lr 3e-4 gave 12.2, 15.9,
#: 9.0 against 4.6, 9.9, 5.0 with 1e-4 (random ~0.3, oracle ~17.6).
CPU_QUICKSTART: dict[str, Any] = {
    "prefill_episodes": 8,
    "train_ratio": 0.5,
    "wm_indices": 16,
    "ac_indices": 32,
    "imag_horizon": 5,
    "units": 64,
    "dyn_deter": 128,
    "dyn_hidden": 64,
    "learning_rate": 3e-4,
    "actor_lr": 3e-4,
    "critic_lr": 3e-4,
    "policy_kwargs": {"encoder_units": 64, "encoder_layers": 2},
}

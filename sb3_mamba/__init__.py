"""sb3-mamba: MAMBA (model-based meta-RL) for Stable-Baselines3.

Importing ``sb3_mamba`` also registers the meta-RL environment IDs of
:mod:`sb3_mamba_envs`.
"""

import sb3_mamba_envs  # noqa: F401  (registers the Gymnasium IDs)

__version__ = "0.1.0"

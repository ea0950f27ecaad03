"""sb3-mamba: MAMBA (model-based meta-RL, Rimon et al. ICLR 2024) for Stable-Baselines3.

Importing ``sb3_mamba`` also registers the meta-RL environment IDs of
:mod:`sb3_mamba_envs`.
"""

from pathlib import Path as _Path

import sb3_mamba_envs  # noqa: F401  (registers the Gymnasium IDs)
from sb3_mamba.checkpoints import CheckpointError, latest_checkpoint
from sb3_mamba.evaluation import MetaEvalCallback, MetaEvalResult, evaluate_meta_policy
from sb3_mamba.export import export_onnx, initial_onnx_state
from sb3_mamba.mamba import MAMBA, NonFiniteError, NonFiniteLossError
from sb3_mamba.policies import RSSMPolicy
from sb3_mamba.presets import PRESETS
from sb3_mamba.safe_load import UnsafeFileError

__all__ = [
    "MAMBA",
    "PRESETS",
    "CheckpointError",
    "MetaEvalCallback",
    "MetaEvalResult",
    "NonFiniteError",
    "NonFiniteLossError",
    "RSSMPolicy",
    "UnsafeFileError",
    "evaluate_meta_policy",
    "export_onnx",
    "initial_onnx_state",
    "latest_checkpoint",
]
#: stated once, in sb3_mamba/version.txt (pyproject.toml reads the same file)
__version__ = (_Path(__file__).parent / "version.txt").read_text(encoding="utf-8").strip()

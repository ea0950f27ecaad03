"""Which tests need MuJoCo rendering, and whether this machine can do it."""

from __future__ import annotations

import functools
import importlib

import pytest

from sb3_mamba_envs import ENV_IDS

#: IDs whose observations are MuJoCo renderings: every use needs EGL or OSMesa.
PIXEL_MUJOCO_IDS = ("MetaReacherPixels-v0",)
SKIP_REASON = "MuJoCo cannot render here: install EGL (libegl1) or OSMesa and set MUJOCO_GL"


@functools.cache
def can_render() -> bool:
    try:
        # sb3_mamba_envs.reacher picks the headless backend (MUJOCO_GL) before dm_control loads
        importlib.import_module("sb3_mamba_envs.reacher")
        from dm_control import suite

        suite.load("reacher", "easy").physics.render(8, 8)
        return True
    except Exception:
        return False


def env_params(ids=ENV_IDS) -> list:
    """``ids`` as pytest params; the MuJoCo pixel envs skip (with the reason) where nothing renders."""
    return [
        pytest.param(
            env_id, marks=pytest.mark.skipif(env_id in PIXEL_MUJOCO_IDS and not can_render(), reason=SKIP_REASON)
        )
        for env_id in ids
    ]

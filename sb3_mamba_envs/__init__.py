"""The meta-RL environments of MAMBA (Rimon et al., ICLR 2024) as Gymnasium IDs.

Importing this package registers the IDs (Gymnasium 1.x has no plugin
auto-loading); ``gym.make("sb3_mamba_envs:MetaRooms-4-v0")`` imports it for
you, and rl_zoo3 does with ``--gym-packages sb3_mamba_envs``. Entry points are
strings, so importing this package stays cheap (dm_control is only imported
when a Reacher env is made) and subprocess workers can rebuild the envs.

One Gymnasium episode is one meta-episode of K sub-episodes on one task; see
:class:`sb3_mamba_envs.meta_episode.MetaEpisodeEnv`.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from sb3_mamba_envs.meta_episode import MetaEpisodeEnv, TaskEnv, check_action

__all__ = ["ENV_IDS", "MetaEpisodeEnv", "TaskEnv", "check_action"]

#: Every registered ID with its entry point and default kwargs.
_SPECS: dict[str, tuple[str, dict]] = {
    "MetaPointRobot-v0": ("sb3_mamba_envs.point_robot:MetaPointRobot", {}),
    "MetaPointRobotWind-v0": ("sb3_mamba_envs.point_robot:MetaPointRobot", {"wind_std": 0.3}),
    "MetaEscapeRoom-v0": ("sb3_mamba_envs.escape_room:MetaEscapeRoom", {}),
    **{f"MetaRooms-{n}-v0": ("sb3_mamba_envs.rooms:MetaRooms", {"num_rooms": n}) for n in range(1, 9)},
    **{f"MetaReacher-{n}-v0": ("sb3_mamba_envs.reacher:MetaReacher", {"num_goals": n}) for n in range(1, 5)},
    "MetaReacherPixels-v0": (
        "sb3_mamba_envs.reacher:MetaReacher",
        {"num_goals": 1, "num_sub_episodes": 2, "pixels": True},
    ),
    "MetaHumanoidDir-v0": ("sb3_mamba_envs.humanoid:MetaHumanoidDir", {}),
    "MetaPandaReacher-v0": ("sb3_mamba_envs.panda:MetaPandaReacher", {}),
}

#: The registered IDs, in a stable order.
ENV_IDS: tuple[str, ...] = tuple(_SPECS)

for _env_id, (_entry_point, _kwargs) in _SPECS.items():
    if _env_id not in registry:  # re-importing (e.g. importlib.reload) must not warn
        register(id=_env_id, entry_point=_entry_point, kwargs=_kwargs)

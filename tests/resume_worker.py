"""A small MAMBA training run that can be SIGKILLed at a chosen point and resumed (used by test_resume.py).

    python tests/resume_worker.py RUN_DIR --total 400 [--env ID] [--kill-at STEP] [--kill-in-save N] [--resume]

Without ``--resume`` it starts from scratch; with it, it continues from the newest
complete checkpoint in ``RUN_DIR/checkpoints``. ``--kill-at`` SIGKILLs the process
once ``num_timesteps`` reaches STEP (after that step's checkpoint, if any);
``--kill-in-save`` SIGKILLs it inside the N-th ``torch.save`` call of the process,
i.e. in the middle of writing a checkpoint zip. At the end the final model and
replay buffer are written to ``RUN_DIR/final.zip`` and ``RUN_DIR/final_buffer.pkl``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys

import torch
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_mamba import MAMBA
from sb3_mamba.checkpoints import latest_checkpoint

N_ENVS = 2
CHECKPOINT_FREQ = 10  # vec-env steps (= 20 env steps)
MODEL_KWARGS = dict(
    prefill_episodes=2,
    batch_size=4,
    train_ratio=0.25,
    wm_indices=8,
    ac_indices=8,
    imag_horizon=3,
    wm_horizon_initial=5,
    wm_horizon_steps=200,
    units=16,
    dyn_deter=32,
    dyn_stoch=4,
    dyn_discrete=4,
    dyn_hidden=16,
    policy_kwargs={"encoder_units": 16, "encoder_layers": 1, "actor_critic_layers": 1, "head_layers": 1},
)


class KillAt(BaseCallback):
    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
        return True


def kill_in_nth_torch_save(n: int) -> None:
    original, calls = torch.save, [0]

    def save(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    torch.save = save


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=pathlib.Path)
    parser.add_argument("--total", type=int, default=400)
    parser.add_argument("--env", default="MetaRooms-1-v0", help="any ID with a sub_episode_length argument")
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--kill-in-save", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # bit-exact float results need the same thread count in every process

    env = make_vec_env(args.env, n_envs=N_ENVS, seed=0, env_kwargs={"sub_episode_length": 10})
    checkpoint_dir = args.run_dir / "checkpoints"
    if args.resume:
        found = latest_checkpoint(checkpoint_dir)
        if found is None or found[1] is None:
            sys.exit(f"no complete checkpoint in {checkpoint_dir}")
        model = MAMBA.load(found[0], env=env)
        model.load_replay_buffer(found[1])
    else:
        model = MAMBA("RSSMPolicy", env, seed=0, **MODEL_KWARGS)
    callbacks: list[BaseCallback] = [CheckpointCallback(CHECKPOINT_FREQ, str(checkpoint_dir), save_replay_buffer=True)]
    if args.kill_at is not None:
        callbacks.append(KillAt(args.kill_at))
    if args.kill_in_save is not None:
        kill_in_nth_torch_save(args.kill_in_save)
    model.learn(args.total - model.num_timesteps, callback=callbacks, reset_num_timesteps=not args.resume)
    model.save(args.run_dir / "final.zip")
    model.save_replay_buffer(args.run_dir / "final_buffer.pkl")


if __name__ == "__main__":
    main()

"""Record a trained agent's meta-episode as a GIF, each sub-episode's trail in its own colour (paper Fig. 1).

python examples/record_gif.py --model mamba_quickstart.zip --env MetaRooms-1-v0 --sub-episode-length 10
python examples/record_gif.py --model logs/mamba/MetaRooms-3-v0_1/MetaRooms-3-v0.zip --env MetaRooms-3-v0
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
from PIL import Image

from sb3_mamba import MAMBA


def record(model: MAMBA, env: gym.Env, path: str, seed: int = 0, fps: int = 10) -> float:
    """Play one meta-episode with ``model`` in ``env`` (render_mode="rgb_array") and save it; returns its return."""
    obs, _ = env.reset(seed=seed)
    frames, state, start, total, done = [env.render()], None, np.ones(1, dtype=bool), 0.0, False
    while not done:
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        obs, reward, terminated, truncated, _ = env.step(action)
        start = np.zeros(1, dtype=bool)
        total += reward
        frames.append(env.render())
        done = terminated or truncated
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--env", default="MetaRooms-1-v0")
    parser.add_argument("--sub-episode-length", type=int, default=0, help="T (0: the env's own)")
    parser.add_argument("--out", default="meta_episode.gif")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    kwargs = {"sub_episode_length": args.sub_episode_length} if args.sub_episode_length else {}
    env = gym.make(args.env, render_mode="rgb_array", **kwargs)
    model = MAMBA.load(args.model)
    total = record(model, env, args.out, seed=args.seed)
    print(f"return {total:.2f}; saved {args.out}")


if __name__ == "__main__":
    main()

"""Play meta-episodes of a meta-RL env with a random and an oracle policy and print their returns.

The oracle reads the hidden task (``env.unwrapped.task``): it is the upper
reference a meta-RL agent (which must first find the task) tries to approach.

    python examples/meta_env_demo.py --env MetaRooms-3-v0 --episodes 20
    python examples/meta_env_demo.py --env MetaPointRobot-v0 --gif prn.gif
"""

from __future__ import annotations

import argparse

import gymnasium as gym

import sb3_mamba_envs  # noqa: F401  (registers the IDs)
from sb3_mamba_envs.oracles import oracle_policy, play_scripted


def save_gif(env_id: str, path: str, seed: int) -> None:
    """Record one oracle meta-episode (each sub-episode's trail in its own colour)."""
    from PIL import Image

    env = gym.make(env_id, render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    policy = oracle_policy(env)
    frames, done = [env.render()], False
    while not done:
        obs, _, terminated, truncated, _ = env.step(policy(obs))
        frames.append(env.render())
        done = terminated or truncated
    images = [Image.fromarray(frame) for frame in frames[::2]]
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)
    print(f"saved {len(images)} frames to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="MetaRooms-3-v0", help="a registered ID, e.g. MetaPointRobot-v0")
    parser.add_argument("--episodes", type=int, default=20, help="meta-episodes per policy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gif", default=None, help="also save an oracle meta-episode as a GIF here")
    args = parser.parse_args()

    env = gym.make(args.env)
    meta = env.unwrapped
    print(
        f"{args.env}: K={meta.num_sub_episodes} sub-episodes x T={meta.sub_episode_length} steps "
        f"(H={meta.horizon}); observation {env.observation_space}, action {env.action_space}"
    )
    print(f"{'policy':8s} {'return (mean +- std)':>22s}   per sub-episode          env steps/s")
    for policy_name in ("random", "oracle"):
        returns, sub_returns, sps = play_scripted(env, policy_name, args.episodes, args.seed)
        subs = "  ".join(f"{r:7.1f}" for r in sub_returns.mean(axis=0))
        print(f"{policy_name:8s} {returns.mean():10.1f} +- {returns.std():7.1f}   {subs:24s} {sps:8.0f}")
    env.close()
    if args.gif:
        save_gif(args.env, args.gif, args.seed)


if __name__ == "__main__":
    main()

"""The semantics of the paper's reference implementation (zoharri/mamba @ 411bdfe), one test per fact.

These tests check what the update computes, not that two of our paths agree
(``tests/test_equivalence.py`` does that): each one fails on a behaviour the
reference does not have.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from sb3_mamba import MAMBA
from sb3_mamba.behavior import (
    ActorCritic,
    ImaginationStarts,
    ReturnNormalizer,
    actor_objective,
    frozen,
    trajectory_weight,
)
from sb3_mamba.distributions import symlog
from sb3_mamba.presets import PRESETS
from sb3_mamba.rssm import RSSM
from sb3_mamba.world_model import WorldModel, window_steps
from sb3_mamba.zoo import HYPERPARAMS_DIR, load_hyperparams

SMALL = dict(units=16, head_layers=1, encoder_units=16, encoder_layers=1, deter=16, stoch=3, classes=4, hidden=8)


# -- actor-critic -------------------------------------------------------------------------------
def test_dynamics_objective_keeps_the_baselines_pathwise_gradient():
    returns = torch.tensor([[2.0, 4.0]], requires_grad=True)
    baseline = torch.tensor([[1.0, 1.0]], requires_grad=True)
    scale = torch.tensor(2.0)
    objective = actor_objective(returns, baseline, scale, log_prob=None)
    torch.testing.assert_close(objective, torch.tensor([[0.5, 1.5]]))
    objective.sum().backward()
    torch.testing.assert_close(baseline.grad, torch.full((1, 2), -0.5))  # -1 / S: not detached
    torch.testing.assert_close(returns.grad, torch.full((1, 2), 0.5))


def test_reinforce_advantage_is_unscaled_and_detached():
    returns = torch.tensor([[5.0]], requires_grad=True)
    baseline = torch.tensor([[1.0]], requires_grad=True)
    log_prob = torch.tensor([[-0.5]], requires_grad=True)
    objective = actor_objective(returns, baseline, torch.tensor(10.0), log_prob)
    torch.testing.assert_close(objective, torch.tensor([[-2.0]]))  # log pi * (R - v), no / S
    objective.sum().backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([[4.0]]))
    assert returns.grad is None and baseline.grad is None


def test_weights_use_the_start_states_continuation():
    cont = torch.tensor([[0.5], [0.8], [1.0]])  # states 0, 1, 2
    weight = trajectory_weight(cont, discount=0.9)
    torch.testing.assert_close(weight, torch.tensor([[1.0], [0.9 * 0.5], [0.9 * 0.5 * 0.9 * 0.8]]))


def test_return_percentiles_start_at_zero():
    norm = ReturnNormalizer(decay=0.99)
    norm.update(torch.linspace(0, 100, 1001))
    # EMA from 0 as the reference's RewardEMA: 0.01 * 5 and 0.01 * 95
    assert norm.low.item() == pytest.approx(0.05) and norm.high.item() == pytest.approx(0.95)
    assert norm.scale().item() == 1.0


def test_old_checkpoints_of_the_normalizer_still_load():
    state = {"low": torch.tensor(1.0), "high": torch.tensor(3.0), "initialized": torch.tensor(True)}
    norm = ReturnNormalizer()
    norm.load_state_dict(state)
    assert norm.scale().item() == 2.0


def _continuous_actor_critic():
    torch.manual_seed(0)
    wm = WorldModel(spaces.Box(-1, 1, (5,), np.float32), action_dim=2, **SMALL)
    ac = ActorCritic(wm.rssm.feat_dim, spaces.Box(-1, 1, (2,), np.float32), units=16, layers=1)
    return wm, ac


def test_actor_reads_detached_features_in_imagination():
    """The reference's ``behavior_stop_grad``: the actor reads imagined states without their gradient,
    while the heads read them with it (dynamics backpropagation into earlier actions)."""
    wm, ac = _continuous_actor_critic()
    start = wm.rssm.initial(6)
    start = ImaginationStarts(torch.randn_like(start["deter"]), start["stoch"])
    actor_inputs, reward_inputs = [], []
    ac.actor.register_forward_hook(lambda module, args, out: actor_inputs.append(args[0]))
    wm.reward_head.register_forward_hook(lambda module, args, out: reward_inputs.append(args[0]))
    imagination = ac.imagine(wm, start, horizon=2)
    assert len(actor_inputs) == 2 and not any(x.requires_grad for x in actor_inputs)
    assert reward_inputs and all(x.requires_grad for x in reward_inputs)
    # the actor's parameters get the pathwise gradient of state 1's predictions through the step-0 action
    # (the continuation head: reward and critic heads start at zero)
    cont_grad = torch.autograd.grad(imagination.cont[0].sum(), list(ac.actor.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in cont_grad)


def test_imag_horizon_counts_transitions():
    wm, ac = _continuous_actor_critic()
    imagination = ac.imagine(wm, ImaginationStarts.of(wm.rssm.initial(4)), horizon=1)
    # the reference's imag_horizon 2 (Rooms, PRN): start + 1 imagined state, 1 action, 1 return target
    assert imagination.actions.shape[0] == 1 and imagination.actor_out.shape[0] == 1
    assert imagination.reward.shape[0] == 1 and imagination.value.shape[0] == 2
    assert PRESETS["mamba"]["imag_horizon"] == 9  # the reference's 10
    assert PRESETS["dreamer_vanilla"]["imag_horizon"] == 14  # the reference's 15


# -- replay ------------------------------------------------------------------------------------
class WideBoxEnv(gym.Env):
    """Actions in [-2, 3]; records what it received. One episode of 12 steps."""

    horizon = 12

    def __init__(self):
        self.observation_space = spaces.Box(-10, 10, (2,), np.float32)
        self.action_space = spaces.Box(-2.0, 3.0, (1,), np.float32)
        self.received: list[float] = []
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.received.append(float(np.asarray(action).reshape(-1)[0]))
        self.t += 1
        return np.full(2, self.t / 12, np.float32), float(action[0]), False, self.t >= 12, {}


def test_replay_stores_the_actions_the_model_consumes():
    env = WideBoxEnv()
    model = MAMBA(
        "RSSMPolicy",
        env,
        seed=0,
        prefill_episodes=1,
        batch_size=2,
        train_ratio=0.1,
        wm_indices=4,
        ac_indices=4,
        imag_horizon=1,
        units=16,
        dyn_deter=16,
        dyn_stoch=2,
        dyn_discrete=2,
        dyn_hidden=8,
        policy_kwargs=dict(encoder_units=16, encoder_layers=1, actor_critic_layers=1, head_layers=1),
    )
    model.learn(48)  # one prefill episode, then the actor's
    stored = np.concatenate([episode["action"][1:, 0] for episode in model.replay_buffer.episodes])
    received = np.array(env.received[: len(stored)])
    assert stored.min() >= -1.0 and stored.max() <= 1.0
    assert received.min() < -1.0 or received.max() > 1.0  # the env saw its own units
    np.testing.assert_allclose(-2.0 + (stored + 1.0) * 0.5 * 5.0, received, rtol=1e-5, atol=1e-5)


# -- per-env settings of the zoo files ---------------------------------------------------------------
#: env ID -> (real env steps, H' at step 0, imag_horizon, encoder layers, train_ratio): the reference's
#: configs.yaml block with its doubled step counter halved and its imag_horizon less one
REFERENCE_RUNS = {
    "MetaPointRobot-v0": (1e6, 300, 1, 4, 0.01 / 3),
    "MetaPointRobotWind-v0": (1e6, 300, 9, 4, 0.2 / 3),
    "MetaEscapeRoom-v0": (2e6, 120, 9, 4, 0.2 / 2),
    "MetaRooms-3-v0": (3e6, 50, 1, 4, 0.1 / 2),
    "MetaReacher-1-v0": (1e7, 50, 9, 2, 0.03 / 3),
    "MetaPandaReacher-v0": (1e7, 50, 9, 2, 0.06 / 3),
    "MetaHumanoidDir-v0": (1.5e7, 50, 9, 2, 0.03 / 2),
}


@pytest.mark.parametrize("env_id", sorted(REFERENCE_RUNS))
def test_zoo_entries_match_the_reference_runs(env_id):
    budget, initial, imag_horizon, encoder_layers, ratio = REFERENCE_RUNS[env_id]
    params = load_hyperparams("mamba", env_id)
    assert params["n_timesteps"] == budget
    assert params["wm_horizon_initial"] == initial
    assert params["imag_horizon"] == imag_horizon
    assert params["train_ratio"] == pytest.approx(ratio, rel=1e-9)
    assert params["policy_kwargs"]["encoder_units"] == 512
    assert params["policy_kwargs"]["encoder_layers"] == encoder_layers
    if initial == 50:  # reference N_WM "5e6" ("15e6" on Humanoid-Dir) on its doubled counter
        assert params["wm_horizon_steps"] == (7.5e6 if env_id == "MetaHumanoidDir-v0" else 2.5e6)
    assert params.get("n_envs") == (1 if env_id == "MetaPandaReacher-v0" else 10)


@pytest.mark.parametrize("env_id", ["MetaPointRobot-v0", "MetaPointRobotWind-v0", "MetaEscapeRoom-v0"])
def test_no_horizon_schedule_where_the_reference_starts_at_h(env_id):
    params = load_hyperparams("mamba", env_id)
    kwargs = {k: v for k, v in params.items() if k not in ("policy", "n_envs", "n_timesteps", "monitor_kwargs")}
    kwargs["policy_kwargs"] = {**kwargs["policy_kwargs"], "encoder_units": 16}
    model = MAMBA("RSSMPolicy", env_id, **{**kwargs, "dyn_deter": 16, "units": 16})
    assert model.wm_horizon() == model.meta_episode_length  # H' = H at step 0


def test_baseline_files_share_budgets_and_horizons():
    for algo in ("dreamer_tune", "dreamer_vanilla"):
        for env_id, (budget, *_rest) in REFERENCE_RUNS.items():
            assert load_hyperparams(algo, env_id)["n_timesteps"] == budget, (algo, env_id)
    assert load_hyperparams("dreamer_tune", "MetaPointRobotWind-v0")["imag_horizon"] == 9
    assert (HYPERPARAMS_DIR / "mamba.yml").is_file()


def test_yaml_strings_never_run_code(tmp_path):
    conf = tmp_path / "evil.yml"
    conf.write_text("MetaPointRobot-v0:\n  policy_kwargs: \"__import__('os').system('echo pwned')\"\n")
    with pytest.raises(ValueError, match="dict"):
        load_hyperparams("mamba", "MetaPointRobot-v0", conf)
    conf.write_text("MetaPointRobot-v0:\n  policy_kwargs: \"dict(x=open('f'))\"\n")
    with pytest.raises(ValueError, match="literals"):
        load_hyperparams("mamba", "MetaPointRobot-v0", conf)


def test_deterministic_acting_takes_the_actor_mode_on_a_sampled_latent():
    from tests.test_mamba import TINY, rooms_env

    model = MAMBA("RSSMPolicy", rooms_env(), seed=0, **TINY)
    obs = np.zeros((2, 4), np.float32)
    states = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        states.append(model.predict(obs, deterministic=True)[1][1])  # the latent (stoch)
    np.testing.assert_array_equal(states[0], states[1])
    assert not np.array_equal(states[0], states[2])  # the reference samples the latent at evaluation too


# -- the reference's reconstruction window (reconstruction_window: 3, models.py) -------------------
WINDOW_WM = dict(units=16, head_layers=1, encoder_units=16, encoder_layers=1, deter=16, stoch=3, classes=4, hidden=8)


def test_window_steps_pair_each_embedding_with_the_next_steps_data():
    """Around index t the window reads the embeddings of t-1, t, t+1 and predicts steps t, t+1, t+2;
    entries whose embedding precedes step 0 or whose target lies past the valid steps are masked."""
    index = torch.tensor([[0, 2], [1, 1]])  # (B, L)
    mask = torch.tensor([[True] * 4, [True, True, True, False]])  # the second sequence has 3 valid steps
    embed_step, target_step, valid = window_steps(index, mask, 3)
    assert embed_step.tolist() == [[0, 0, 1, 1, 2, 3], [0, 1, 2, 0, 1, 2]]
    assert target_step.tolist() == [[0, 1, 2, 2, 3, 3], [1, 2, 3, 1, 2, 3]]
    assert valid.tolist() == [[0, 1, 1, 1, 1, 0], [1, 1, 0, 1, 1, 0]]
    assert window_steps(index, mask, 1)[1].tolist() == [[1, 3], [2, 2]]  # W = 1: the next step only
    with pytest.raises(ValueError, match="odd"):
        window_steps(index, mask, 2)


def window_world_model(window: int = 3) -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(spaces.Box(-10, 10, (1,), np.float32), action_dim=2, reconstruction_window=window, **WINDOW_WM)


def test_window_heads_pair_windows_with_tiled_features_as_the_reference_does():
    """The reference's ``feat.repeat(1, W, 1)`` tiles: entry j reads the features of sampled index
    j mod L and the embedding of window step j (index j // W)."""
    wm = window_world_model()
    B, T, L, W = 2, 8, 4, 3
    feat_l = torch.randn(B, L, wm.rssm.feat_dim)
    embed = torch.randn(B, T, wm.embed_dim)
    index = torch.randint(0, T, (B, L))
    seen = {}
    wm.window_heads["reward"].register_forward_hook(lambda m, args, out: seen.update(inputs=args[0]))
    obs = {"vector": torch.randn(B, T, 1)}
    wm.window_losses(
        feat_l, embed, obs, torch.zeros(B, T), torch.zeros(B, T), torch.ones(B, T), index, torch.ones(B, L)
    )
    inputs = seen["inputs"]  # (B, L * W, F + E)
    embed_step, _, _ = window_steps(index, torch.ones(B, T), W)
    for j in range(L * W):
        torch.testing.assert_close(inputs[:, j, : wm.rssm.feat_dim], feat_l[:, j % L])
        torch.testing.assert_close(inputs[:, j, wm.rssm.feat_dim :], embed[torch.arange(B), embed_step[:, j]])


class _ReadStep(torch.nn.Module):
    """A window decoder that outputs symlog(step + shift), the step read from the embedding's last column."""

    def __init__(self, shift: int):
        super().__init__()
        self.shift = shift

    def forward(self, inputs):
        return symlog(inputs[..., -1:] + self.shift)


def test_window_decoder_targets_the_step_after_its_embedding_and_averages_over_all_entries():
    wm = window_world_model()
    B, T, L = 2, 6, 5
    obs = {"vector": torch.arange(T, dtype=torch.float32).expand(B, T).unsqueeze(-1)}  # obs_t = t
    embed = torch.zeros(B, T, wm.embed_dim)
    embed[..., -1] = torch.arange(T, dtype=torch.float32)  # the embedding of step k carries k
    index = torch.randint(0, T, (B, L))
    args = (
        torch.zeros(B, L, wm.rssm.feat_dim),
        embed,
        obs,
        torch.zeros(B, T),
        torch.zeros(B, T),
        torch.ones(B, T),
        index,
        torch.ones(B, L),
    )
    wm.window_heads["vector"] = _ReadStep(shift=1)  # predicts obs_{k+1} from embed_k
    assert wm.window_losses(*args)["window_decoder_loss"] == 0
    wm.window_heads["vector"] = _ReadStep(shift=0)  # predicts obs_k: wrong by one step
    _, target_step, valid = window_steps(index, torch.ones(B, T), 3)
    expected = (((symlog(target_step - 1.0) - symlog(target_step.float())) ** 2) * valid).sum() / (B * L * 3)
    torch.testing.assert_close(wm.window_losses(*args)["window_decoder_loss"], expected)


def test_window_losses_train_the_encoder_and_the_features():
    wm = window_world_model()
    obs, action, reward, terminated, is_first, mask = (
        {"vector": torch.randn(2, 7, 1)},
        torch.randn(2, 7, 2),
        torch.randn(2, 7),
        torch.zeros(2, 7),
        torch.zeros(2, 7, dtype=torch.bool),
        torch.ones(2, 7, dtype=torch.bool),
    )
    _, metrics, _ = wm.loss(obs, action, reward, terminated, is_first, mask, num_indices=4)
    window = sum(v for k, v in metrics.items() if k.startswith("window_"))
    assert {"window_decoder_loss", "window_reward_loss", "window_continue_loss"} <= set(metrics)
    window.backward()
    assert wm.vector_encoder[0].weight.grad.abs().sum() > 0  # through the embeddings
    assert wm.rssm.parameters().__next__().grad is not None  # through the features
    assert wm.vector_decoder[0].weight.grad is None  # the one-step heads are not part of it


def test_window_can_be_turned_off():
    wm = window_world_model(window=0)
    assert len(wm.window_heads) == 0
    obs = {"vector": torch.randn(1, 5, 1)}
    _, metrics, _ = wm.loss(
        obs,
        torch.randn(1, 5, 2),
        torch.randn(1, 5),
        torch.zeros(1, 5),
        torch.zeros(1, 5, dtype=torch.bool),
        torch.ones(1, 5, dtype=torch.bool),
        num_indices=3,
    )
    assert not any(k.startswith("window_") for k in metrics)
    with pytest.raises(ValueError, match="odd"):
        window_world_model(window=2)


# -- initialisation (reference tools.weight_init / uniform_weight_init) ---------------------------
def test_layers_are_initialised_as_the_reference():
    """Hidden Linear weights: normal of variance 1 / fan_avg truncated at 2 std, zero biases; output
    layers uniform with limit sqrt(3 / fan_avg); reward and critic heads zero; the RSSM's posterior input
    layer (stored as two blocks) drawn with the fan of the whole (deter + embed) -> hidden matrix."""
    torch.manual_seed(0)
    policy_wm = WorldModel(spaces.Box(-1, 1, (4,), np.float32), action_dim=2, encoder_units=512, encoder_layers=2)
    hidden = policy_wm.vector_encoder[3].weight  # 512 -> 512
    std = (1.0 / 512) ** 0.5
    assert abs(hidden.std().item() / std - 1) < 0.02
    assert hidden.abs().max().item() <= 2 * std / 0.87962566103423978 + 1e-6
    head = policy_wm.vector_decoder[-1]  # 512 -> 4: uniform
    limit = (3.0 / ((512 + 4) / 2)) ** 0.5
    assert head.weight.abs().max().item() <= limit and head.weight.abs().max().item() > 0.9 * limit
    assert not head.bias.any()
    assert not policy_wm.reward_head[-1].weight.any() and not policy_wm.window_heads["reward"][-1].weight.any()
    rssm = policy_wm.rssm
    fan_avg = (rssm.deter_dim + policy_wm.embed_dim + 64) / 2
    joint = torch.cat([rssm.post_deter.weight, rssm.post_embed.weight], dim=1)
    assert abs(joint.std().item() / fan_avg**-0.5 - 1) < 0.05
    gru = rssm.gru.linear.weight  # (64 + 512) -> 3 * 512
    assert abs(gru.std().item() / ((64 + 512 + 1536) / 2) ** -0.5 - 1) < 0.02
    ac = ActorCritic(policy_wm.rssm.feat_dim, spaces.Box(-1, 1, (2,), np.float32))
    assert not ac.critic[-1].weight.any() and ac.actor[-1].weight.any()


# -- the actor-critic losses in the reference's structure ----------------------------------------------
def reference_lambda_return(reward, value, pcont, bootstrap, lam):
    """The reference's lambda-return recursion, written out: inputs r + pcont * v' * (1 - lam), then
    R_t = inputs_t + pcont_t * lam * R_{t+1} from R_T = bootstrap. All (T, N) but bootstrap (N,)."""
    next_value = torch.cat([value[1:], bootstrap[None]])
    inputs = reward + pcont * next_value * (1.0 - lam)
    returns, last = [], bootstrap
    for t in reversed(range(reward.shape[0])):
        last = inputs[t] + pcont[t] * lam * last
        returns.append(last)
    return torch.stack(returns[::-1])


def reference_structured_losses(ac, world_model, start, horizon, discount, lam, entropy, slow_reg=1.0):
    """The reference's ``ImagBehavior._train`` on our modules, in its structure: its ``imag_horizon``
    counts states with the start (``horizon`` transitions here are its ``horizon + 1``), every head
    runs on all states 0..horizon, the discount is gamma * cont of each state, the actor reads detached
    features, dynamics backpropagation maximises (R - v) / S with v keeping its pathwise gradient,
    REINFORCE uses the unscaled sg(R - v), the actor and the critic are re-run for their losses."""
    with frozen(world_model), frozen(ac.critic):
        state = {"deter": start.take(start.deter).detach(), "stoch": start.take(start.stoch).detach()}
        feats, actions = [RSSM.feat(state)], []
        for _ in range(horizon):
            policy = ac.policy(feats[-1].detach())
            with torch.set_grad_enabled(torch.is_grad_enabled() and not ac.discrete):
                action = policy.sample() if ac.discrete else policy.rsample()
                state = world_model.rssm.img_step(state, action)
            feats.append(RSSM.feat(state))
            actions.append(action)
        feats, actions = torch.stack(feats), torch.stack(actions)  # (h + 1, N, F), (h, N, A)
        reward = world_model.two_hot.mean(world_model.reward_head(feats))  # (h + 1, N), states 0..h
        pcont = discount * torch.sigmoid(world_model.continue_head(feats).squeeze(-1))  # (h + 1, N)
        value = ac.two_hot.mean(ac.critic(feats))  # (h + 1, N)
        target = reference_lambda_return(reward[1:], value[:-1], pcont[1:], value[-1], lam)  # (h, N)
    weights = torch.cumprod(torch.cat([torch.ones_like(pcont[:1]), pcont[:-1]]), 0).detach()  # (h + 1, N)
    ac.return_norm.update(target)
    offset, scale = ac.return_norm.low, ac.return_norm.scale()
    policy = ac.policy(feats[:-1].detach())
    if ac.discrete:
        actor_target = policy.log_prob(actions) * (target - ac.two_hot.mean(ac.critic(feats[:-1]))).detach()
    else:
        actor_target = (target - offset) / scale - (value[:-1] - offset) / scale
    actor_entropy = policy.entropy()
    actor_loss = -torch.mean(weights[:-1] * (actor_target + entropy * actor_entropy))
    critic_feat = feats[:-1].detach()
    logits = ac.critic(critic_feat)
    slow_target = ac.two_hot.mean(ac.slow_critic(critic_feat)).detach()
    critic_nll = -ac.two_hot.log_prob(logits, target.detach()) - slow_reg * ac.two_hot.log_prob(logits, slow_target)
    critic_loss = torch.mean(weights[:-1] * critic_nll)
    return actor_loss, critic_loss, {"imag_return": target.mean(), "actor_entropy": actor_entropy.mean()}


@pytest.mark.parametrize(
    "action_space", [spaces.Discrete(3), spaces.Box(-1, 1, (2,), np.float32)], ids=["discrete", "continuous"]
)
def test_actor_critic_losses_follow_the_reference_structure(action_space):
    """Our losses (lambda_returns, trajectory_weight, actor_objective, behavior_losses) give the values and
    gradients of the reference's formulation written out in its own structure, on the same rollout."""
    import copy

    torch.manual_seed(0)
    action_dim = 3 if isinstance(action_space, spaces.Discrete) else 2
    wm = WorldModel(spaces.Box(-1, 1, (5,), np.float32), action_dim=action_dim, **SMALL)
    ac = ActorCritic(wm.rssm.feat_dim, action_space, units=16, layers=1)
    with torch.no_grad():  # heads off their zero initialisation, so rewards and values vary
        for module in (wm.reward_head, wm.continue_head, ac.critic, ac.slow_critic):
            for p in module.parameters():
                p.add_(0.3 * torch.randn_like(p))
    start = ImaginationStarts(torch.randn(40, SMALL["deter"]), wm.rssm.initial(40)["stoch"])
    results = []
    for losses in (ActorCritic.losses, reference_structured_losses):
        model = copy.deepcopy(ac)
        torch.manual_seed(1)
        actor_loss, critic_loss, metrics = losses(model, wm, start, 3, 0.9, 0.95, 3e-3)
        params = list(model.actor.parameters()) + list(model.critic.parameters())
        grads = torch.autograd.grad(actor_loss + critic_loss, params)
        results.append((actor_loss, critic_loss, metrics["imag_return"], metrics["actor_entropy"], *grads))
    for ours, reference in zip(*results, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    assert results[0][4].abs().sum() > 0  # a real gradient was compared

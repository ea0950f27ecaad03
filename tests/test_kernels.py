"""Every backend computes the eager update: values and gradients, with and without sampling.

The eager modules (:mod:`sb3_mamba.rssm`, :mod:`sb3_mamba.behavior`) are the definition; each fast
path of :mod:`sb3_mamba.kernels` is called through its public function on the same modules,
inputs and random seed, and compared with them:

* the posterior unroll: ``posterior_scan.observe`` on ATen ops and on the C kernels, the compiled step;
* imagination: ``imagination.imagine`` (shared starts, factored features, C GRU cell) and the
  compiled ``ActorCritic.imagine``, for a discrete (REINFORCE) and a continuous (dynamics
  backpropagation) actor, through the actor-critic losses and their gradients;
* a whole MAMBA update per backend, on the same batch.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from sb3_mamba import MAMBA
from sb3_mamba.behavior import ActorCritic, ImaginationStarts
from sb3_mamba.kernels import (
    BACKENDS,
    Backend,
    compiled,
    imagination,
    native,
    posterior_scan,
    select_backend,
    selection,
    window,
)
from sb3_mamba.kernels.imagination import FactoredInput, factored_feat, mlp_outputs
from sb3_mamba.kernels.layers import PaddedLinear, pad_wide_heads
from sb3_mamba.mamba import _imagination_starts
from sb3_mamba.networks import mlp
from sb3_mamba.rssm import RSSM
from sb3_mamba.world_model import ConvDecoder, WorldModel, window_outputs
from tests.test_mamba import TINY

B, T, E, A = 5, 13, 24, 4
HAS_C = native.posterior_scan_library() is not None
needs_c = pytest.mark.skipif(not HAS_C, reason="the C kernels did not build (no C compiler?)")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.fixture
def same_random_draws():
    """Inductor draws its own random numbers unless told to use ATen's (then samples equal eager's)."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        yield


def observe_with(name: str):
    """``(rssm, embed, action, is_first, sample) -> (post, prior)`` of one fast path."""
    if name == "scan-aten":
        return lambda *args: posterior_scan.observe(*args, use_c=False)
    if name == "scan-c":
        return lambda *args: posterior_scan.observe(*args, use_c=True)
    if name == "scan-sync-free":  # what a GPU runs
        return lambda *args: posterior_scan.observe(*args, use_c=False, sync_free=True)
    return compiled.observe


OBSERVE_PATHS = [
    "scan-aten",
    pytest.param("scan-c", marks=needs_c),
    "scan-sync-free",
    pytest.param("compile", marks=pytest.mark.slow),
]


def make_rssm(device: str = "cpu") -> RSSM:
    torch.manual_seed(0)
    rssm = RSSM(E, A, deter=32, stoch=4, classes=5, hidden=16)
    with torch.no_grad():  # move off the initialisation (zero biases, unit norms) so every term matters
        for p in rssm.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return rssm.to(device)


def observe_inputs(device: str = "cpu"):
    torch.manual_seed(1)
    embed = torch.randn(B, T, E).to(device).requires_grad_()
    action = torch.randn(B, T, A).to(device)
    is_first = torch.zeros(B, T, dtype=torch.bool, device=device)
    is_first[:, 0] = True
    is_first[1, 5] = is_first[3, 9] = is_first[3, 10] = True  # restarts inside the sequence
    return embed, action, is_first


def observe_values_and_grads(rssm: RSSM, observe, sample: bool):
    """The posterior, and the gradients of a loss on every output w.r.t. embed and every parameter."""
    device = rssm.initial_deter.device
    embed, action, is_first = observe_inputs(device.type)
    torch.manual_seed(2)
    post, prior = observe(rssm, embed, action, is_first, sample)
    generator = torch.Generator().manual_seed(3)  # fixed loss weights on every output
    outputs = (post["deter"], post["stoch"], post["logits"], prior["logits"])
    weights = [torch.randn(x.shape, generator=generator).to(device) for x in outputs]
    loss = sum((x * w).sum() for x, w in zip(outputs, weights, strict=True))
    loss = loss + (post["stoch"].softmax(-1) ** 2).sum()  # a nonlinear use of the straight-through sample
    params = dict(embed=embed, **dict(rssm.named_parameters()))
    grads = torch.autograd.grad(loss, list(params.values()))
    return post, dict(zip(params, grads, strict=True))


def eager_observe(rssm, embed, action, is_first, sample):
    return rssm.observe(embed, action, is_first, sample=sample)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", OBSERVE_PATHS)
@pytest.mark.parametrize("sample", [True, False])
def test_posterior_unroll_matches_eager(sample, path, device, same_random_draws):
    if path == "scan-c" and device == "cuda":
        pytest.skip("the C kernels are CPU-only")
    rssm = make_rssm(device)
    fast_post, fast_grads = observe_values_and_grads(rssm, observe_with(path), sample)
    eager_post, eager_grads = observe_values_and_grads(rssm, eager_observe, sample)
    for key in ("deter", "stoch", "logits"):
        torch.testing.assert_close(fast_post[key], eager_post[key], rtol=1e-5, atol=1e-5, msg=key)
    assert fast_post["stoch"].sum(-1).allclose(torch.ones(B, T, 4, device=device))  # one-hot latents
    for name, grad in eager_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-4, msg=name)
    # every RSSM parameter the posterior touches gets a real gradient
    assert fast_grads["gru.linear.weight"].abs().sum() > 0 and fast_grads["initial_deter"].abs().sum() > 0


@pytest.mark.slow
def test_the_compiled_unroll_does_not_recompile_when_the_prefix_grows():
    """H' grows with the world-model horizon schedule: the compiled step never sees it."""
    from torch._dynamo.utils import counters

    rssm = make_rssm()
    embed, action, is_first = observe_inputs()
    with torch.no_grad():
        compiled.observe(rssm, embed[:, :4], action[:, :4], is_first[:, :4])  # compiles (first and later steps)
        graphs = counters["stats"]["unique_graphs"]
        assert graphs > 0  # (the counter does count this process's compilations)
        post, _ = compiled.observe(rssm, embed, action, is_first)  # T = 13
    assert post["deter"].shape[1] == T and counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("path", ["scan-aten", pytest.param("scan-c", marks=needs_c)])
def test_the_comparison_detects_a_small_gradient_error(path):
    """The tolerance above is tight: 1% of one weight's gradient off fails it."""
    rssm = make_rssm()
    fast_grads = observe_values_and_grads(rssm, observe_with(path), True)[1]
    eager_grads = observe_values_and_grads(rssm, eager_observe, True)[1]
    wrong = fast_grads["gru.linear.weight"] * 1.01
    with pytest.raises(AssertionError):
        torch.testing.assert_close(wrong, eager_grads["gru.linear.weight"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", ["scan-aten", pytest.param("scan-c", marks=needs_c)])
def test_posterior_unroll_under_bfloat16_autocast_is_close(path):
    rssm = make_rssm()
    with torch.no_grad():  # decisive posterior logits: bfloat16 rounding must not flip a latent's mode
        rssm.post_net[-1].weight.mul_(4.0)
    embed, action, is_first = observe_inputs()
    # (with the mode, deter carries no gradient to embed: the GRU's weight and the logits' embed gradient do)
    wrt = [embed, rssm.gru.linear.weight]
    reference, _ = rssm.observe(embed, action, is_first, sample=False)
    reference_grads = torch.autograd.grad(reference["deter"].sum() + reference["logits"].sum(), wrt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        post, _ = observe_with(path)(rssm, embed, action, is_first, False)
    assert post["deter"].dtype == torch.float32
    torch.testing.assert_close(post["deter"], reference["deter"], rtol=0.05, atol=0.05)
    grads = torch.autograd.grad(post["deter"].sum() + post["logits"].sum(), wrt)
    for grad, reference_grad in zip(grads, reference_grads, strict=True):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        torch.testing.assert_close(grad, reference_grad, rtol=0.1, atol=0.1 * reference_grad.abs().max().item())


@pytest.mark.parametrize("path", ["scan-aten", pytest.param("scan-c", marks=needs_c)])
def test_nan_inputs_stay_nan(path):
    """The kernels must not turn a NaN into a finite number (MAMBA's finite checks rely on it)."""
    rssm = make_rssm()
    embed, action, is_first = observe_inputs()
    embed = embed.detach().clone()
    embed[2, 4] = float("nan")
    post, _ = observe_with(path)(rssm, embed, action, is_first, False)
    assert post["logits"][2, 4].isnan().all()
    assert torch.isfinite(post["deter"][2, :4]).all() and torch.isfinite(post["deter"][[0, 1, 3, 4]]).all()


def test_onednn_check_leaves_the_rng_alone():
    posterior_scan._onednn_linear_works.cache_clear()
    torch.manual_seed(0)
    posterior_scan._onednn_linear_works()
    after_check = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after_check, torch.rand(3))


# -- imagination ---------------------------------------------------------------------------------------
SMALL = dict(units=16, head_layers=1, encoder_units=16, encoder_layers=1, deter=16, stoch=3, classes=4, hidden=8)


def imagine_with(name: str):
    if name == "native-aten":
        return lambda *args: imagination.imagine(*args, use_c=False)
    if name == "native-c":
        return lambda *args: imagination.imagine(*args, use_c=True)
    if name == "native-sync-free":  # what a GPU runs
        return lambda *args: imagination.imagine(*args, use_c=False, sync_free=True)
    return compiled.imagine


IMAGINE_PATHS = [
    "native-aten",
    pytest.param("native-c", marks=needs_c),
    "native-sync-free",
    pytest.param("compile", marks=pytest.mark.slow),
]


def behavior_models(action_space: spaces.Space):
    torch.manual_seed(0)
    wm = WorldModel(spaces.Box(-1, 1, (5,), np.float32), action_dim=3, **SMALL)
    ac = ActorCritic(wm.rssm.feat_dim, action_space, units=16, layers=1)
    with torch.no_grad():  # heads off their zero initialisation, so rewards and values vary
        for module in (wm.reward_head, wm.continue_head, ac.critic, ac.slow_critic):
            for p in module.parameters():
                p.add_(0.3 * torch.randn_like(p))
    return wm, ac


def shared_starts() -> ImaginationStarts:
    """300 starts sharing 7 of 12 posterior states, as MAMBA's prefix sampling gives them (some states
    are never drawn)."""
    torch.manual_seed(1)
    deter = torch.randn(12, SMALL["deter"])
    stoch = torch.nn.functional.one_hot(torch.randint(4, (12, 3)), 4).float()
    return ImaginationStarts(deter, stoch, 5 + torch.randint(7, (300,)))


def behavior_values_and_grads(wm, ac, imagine, horizon: int = 4):
    ac = copy.deepcopy(ac)  # its return normaliser moves
    torch.manual_seed(2)
    actor_loss, critic_loss, metrics = ac.losses(wm, shared_starts(), horizon, 0.997, 0.95, 3e-4, imagine=imagine)
    params = dict(ac.actor.named_parameters(prefix="actor")) | dict(ac.critic.named_parameters(prefix="critic"))
    grads = torch.autograd.grad(actor_loss + critic_loss, list(params.values()))
    return metrics, dict(zip(params, grads, strict=True))


@pytest.mark.parametrize("path", IMAGINE_PATHS)
@pytest.mark.parametrize(
    "action_space", [spaces.Discrete(3), spaces.Box(-1, 1, (3,), np.float32)], ids=["discrete", "continuous"]
)
def test_imagination_and_behavior_losses_match_eager(action_space, path, same_random_draws):
    wm, ac = behavior_models(action_space)
    fast_metrics, fast_grads = behavior_values_and_grads(wm, ac, imagine_with(path))
    eager_metrics, eager_grads = behavior_values_and_grads(wm, ac, None)
    for key, value in eager_metrics.items():
        torch.testing.assert_close(fast_metrics[key], value, rtol=1e-5, atol=1e-6, msg=key)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(grad.abs().sum() > 0 for name, grad in fast_grads.items() if name.endswith("weight"))
    assert not any(p.grad is not None for p in wm.parameters())  # the world model is never updated here


def test_imagination_runs_the_first_discrete_step_once_per_state_action_pair():
    """Discrete starts sharing states: step 1's deterministic state is computed per (state, action) pair."""
    wm, ac = behavior_models(spaces.Discrete(3))
    start = shared_starts()
    torch.manual_seed(2)
    _, feats, actions, _ = imagination._rollout(ac, wm.rssm, start, 3, use_c=HAS_C, sync_free=False)
    pairs = len(torch.unique(start.index * 3 + actions[0].argmax(-1)))
    assert 7 < pairs <= 21 and len(feats[0].dense) == pairs  # far fewer GRU rows than the 300 starts
    assert all(len(feat) == 300 for feat in feats)


def test_imagination_computes_per_state_work_for_the_drawn_states_only():
    wm, ac = behavior_models(spaces.Box(-1, 1, (3,), np.float32))
    rows = []
    ac.actor.register_forward_hook(lambda module, args, out: rows.append(len(args[0])))
    imagination.imagine(ac, wm, shared_starts(), 2, use_c=HAS_C)
    assert rows[0] == 7  # the 7 states drawn, not the 12 the starts index into; then once per start
    assert rows[1:] == [300]
    rows.clear()
    imagination.imagine(ac, wm, shared_starts(), 2, use_c=False, sync_free=True)
    assert rows == [12, 300]  # sync-free: every state the starts index into (their number is known on the host)


# -- the layers of the fast paths ------------------------------------------------------------------------
def test_padded_linear_equals_linear_with_the_same_parameters():
    torch.manual_seed(0)
    padded, plain = PaddedLinear(12, 255), torch.nn.Linear(12, 255)
    plain.load_state_dict(padded.state_dict())  # same parameters, same state-dict keys
    x = torch.randn(3, 7, 12, requires_grad=True)
    out_padded, out_plain = padded(x), plain(x)
    assert out_padded.shape == (3, 7, 255)
    torch.testing.assert_close(out_padded, out_plain)
    grad = torch.randn_like(out_plain)
    grads_padded = torch.autograd.grad(out_padded, [x, padded.weight, padded.bias], grad)
    grads_plain = torch.autograd.grad(out_plain, [x, plain.weight, plain.bias], grad)
    for a, b in zip(grads_padded, grads_plain, strict=True):
        torch.testing.assert_close(a, b)
    heads = torch.nn.ModuleList([mlp(8, 16, 1, out_dim=255), mlp(8, 16, 1, out_dim=5)])
    keys = heads.state_dict().keys()
    pad_wide_heads(heads)
    assert isinstance(heads[0][-1], PaddedLinear)  # two-hot heads
    assert type(heads[1][-1]) is torch.nn.Linear  # narrow heads: padding would cost time
    assert type(heads[0][0]) is torch.nn.Linear and heads.state_dict().keys() == keys


@pytest.mark.parametrize("with_rows", [False, True])
def test_factored_input_linear_equals_the_dense_matmul(with_rows):
    torch.manual_seed(0)
    stoch = torch.nn.functional.one_hot(torch.randint(4, (50, 3)), 4).float()  # N = 50 rows, 3 latents x 4
    deter = torch.randn(7 if with_rows else 50, 6)
    rows = torch.randint(7, (50,)) if with_rows else None
    x = factored_feat(stoch, deter, rows)
    dense = RSSM.feat({"stoch": stoch, "deter": deter if rows is None else deter[rows]})
    torch.testing.assert_close(x.materialize(), dense)
    weight = torch.randn(9, 18, requires_grad=True)
    for grad in (False, True):  # the gather (no gradient) and the one-hot matmul (weight gradient)
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(x.linear(weight), torch.nn.functional.linear(dense, weight))
    upstream = torch.randn(50, 9)
    torch.testing.assert_close(
        torch.autograd.grad(x.linear(weight), weight, upstream)[0],
        torch.autograd.grad(torch.nn.functional.linear(dense, weight), weight, upstream)[0],
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(
            x.linear(weight).float(), torch.nn.functional.linear(dense, weight).float(), rtol=2e-2, atol=5e-2
        )
    # several steps' inputs concatenated, and heads on them: the same as on the dense features
    both = FactoredInput.cat([x, factored_feat(stoch[:20], torch.randn(20, 6))])
    assert len(both) == 70
    torch.testing.assert_close(both.materialize()[:50], dense)
    heads = [mlp(18, 8, 2, out_dim=255), mlp(18, 8, 1, out_dim=1)]
    for factored, plain in zip(mlp_outputs(both, heads), mlp_outputs(both.materialize(), heads), strict=True):
        torch.testing.assert_close(factored, plain)


def test_factored_window_heads_equal_the_eager_heads():
    """Each head on [features tiled, embedding]: the first layers split, stacked, the features' half
    computed once per sampled index and the embedding's once per distinct step give the eager values
    and gradients."""
    torch.manual_seed(0)
    batch, indices, window_size, feat_dim, embed_dim = 3, 5, 3, 10, 6
    heads = torch.nn.ModuleList(
        [
            mlp(feat_dim + embed_dim, 8, 2, out_dim=4),
            mlp(feat_dim + embed_dim, 8, 1, out_dim=255),
            ConvDecoder(feat_dim + embed_dim, (8, 8, 2), depth=4),  # a biased first layer
        ]
    ).double()  # (float64: a summation-order difference cannot hide an error)
    feat_l = torch.randn(batch, indices, feat_dim, dtype=torch.float64, requires_grad=True)
    embed = torch.randn(batch, 9, embed_dim, dtype=torch.float64, requires_grad=True)
    # (B, L * W) window steps: 15 entries per sequence from 9 steps, so steps repeat
    embed_step = torch.randint(9, (batch, indices * window_size))
    inputs = [feat_l, embed, *heads.parameters()]
    upstream = None
    results = []
    sync_free = functools.partial(window.window_outputs, sync_free=True)
    for path in (window_outputs, window.window_outputs, sync_free):
        outputs = path(heads, feat_l, embed, embed_step)
        upstream = upstream or [torch.randn_like(out) for out in outputs]
        results.append((outputs, torch.autograd.grad(outputs, inputs, upstream)))
    (eager_out, eager_grads), *fast_results = results
    for fast_out, fast_grads in fast_results:
        assert [out.shape for out in fast_out] == [(3, 15, 4), (3, 15, 255), (45, 8, 8, 2)]
        for fast, eager in zip([*fast_out, *fast_grads], [*eager_out, *eager_grads], strict=True):
            torch.testing.assert_close(fast, eager, rtol=1e-10, atol=1e-12)
    # a head of another shape: every head through the eager path
    odd = [torch.nn.Linear(feat_dim + embed_dim, 3).double(), heads[0]]
    fast_odd = window.window_outputs(odd, feat_l, embed, embed_step)
    eager_odd = window_outputs(odd, feat_l, embed, embed_step)
    for fast, eager in zip(fast_odd, eager_odd, strict=True):
        torch.testing.assert_close(fast, eager)


# -- the switch and a whole update ---------------------------------------------------------------------------
def test_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="'auto', 'eager', 'native', 'compile'"):
        select_backend("fast")


def test_backend_is_selected_once_and_logged(capsys):
    env = make_vec_env("MetaRooms-1-v0", n_envs=1, seed=0, env_kwargs={"sub_episode_length": 10})
    model = MAMBA("RSSMPolicy", env, seed=0, backend="eager", verbose=1, **TINY)
    assert model.kernels.name == "eager" and "MAMBA backend: eager" in capsys.readouterr().out
    assert MAMBA("RSSMPolicy", env, seed=0, **TINY).kernels.name == "native"  # "auto": native, measured
    with pytest.raises(ValueError, match="backend must be one of"):
        MAMBA("RSSMPolicy", env, backend="fast", **TINY)


def backend_named(name: str) -> Backend:
    """A backend of :func:`select_backend`, or ``"native-sync-free"``: native as it is selected for a GPU
    (ATen ops, sync-free), run here on CPU tensors."""
    return select_backend("native", "cuda") if name == "native-sync-free" else select_backend(name)


def update_losses_and_grads(model: MAMBA, batch, backend: str):
    """Losses and gradients of one update of a copy of ``model``'s networks on ``batch``."""
    policy = copy.deepcopy(model.policy)
    kernels = backend_named(backend)
    if kernels.prepare is not None:
        kernels.prepare(policy)
    wm, ac = policy.world_model, policy.actor_critic
    obs = wm.preprocess(model._obs_to_tensor(batch.obs))
    t = {k: torch.as_tensor(getattr(batch, k)) for k in ("action", "reward", "terminated", "is_first", "mask")}
    torch.manual_seed(0)
    wm_loss, wm_metrics, post = wm.loss(
        obs,
        t["action"],
        t["reward"],
        t["terminated"],
        t["is_first"],
        t["mask"],
        model.wm_indices,
        observe=kernels.observe,
        window_outputs_fn=kernels.window_outputs,
    )
    wm_grads = torch.autograd.grad(wm_loss, list(wm.parameters()), allow_unused=True)
    starts = _imagination_starts(post, t["mask"], model.ac_indices)
    actor_loss, critic_loss, ac_metrics = ac.losses(
        wm, starts, model.imag_horizon, 0.997, 0.95, 3e-4, imagine=kernels.imagine
    )
    ac_grads = torch.autograd.grad(actor_loss + critic_loss, list(ac.actor.parameters()) + list(ac.critic.parameters()))
    return {**wm_metrics, **ac_metrics}, wm_grads, ac_grads


@pytest.mark.parametrize("backend", ["native", "native-sync-free", pytest.param("compile", marks=pytest.mark.slow)])
@pytest.mark.parametrize("env_id", ["MetaRooms-1-v0", "MetaPointRobot-v0"])  # REINFORCE and dynamics backprop
def test_a_whole_update_matches_eager(env_id, backend, same_random_draws):
    env = make_vec_env(env_id, n_envs=2, seed=0, env_kwargs={"sub_episode_length": 10})
    # 40 starts per sequence from 21 states: the shared per-state path is taken
    model = MAMBA("RSSMPolicy", env, seed=0, backend="eager", **{**TINY, "ac_indices": 40, "wm_indices": 12})
    model.learn(120)
    batch = model.replay_buffer.sample_prefixes(4, 21, np.random.default_rng(0))
    fast = update_losses_and_grads(model, batch, backend)
    eager = update_losses_and_grads(model, batch, "eager")
    for key, value in eager[0].items():
        torch.testing.assert_close(fast[0][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for fast_grads, eager_grads in ((fast[1], eager[1]), (fast[2], eager[2])):
        for g_fast, g_eager in zip(fast_grads, eager_grads, strict=True):
            if g_eager is None:
                assert g_fast is None or not g_fast.any()
                continue
            torch.testing.assert_close(g_fast, g_eager, rtol=1e-4, atol=1e-6)
    assert any(g is not None and g.abs().sum() > 0 for g in fast[2])  # real gradients were compared


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "compile"])
def test_every_backend_trains(backend):
    env = make_vec_env("MetaRooms-1-v0", n_envs=1, seed=0, env_kwargs={"sub_episode_length": 10})
    model = MAMBA("RSSMPolicy", env, seed=0, backend=backend, **TINY)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(80)
    assert model._n_updates > 0 and model.kernels.name == ("eager" if backend == "eager" else "native")
    assert any(not torch.equal(a, p) for a, p in zip(before, model.policy.parameters(), strict=True))


# -- "auto": each kernel where it beats ATen here ---------------------------------------------------------
def test_a_kernel_runs_only_where_it_was_measured_faster():
    choice = selection.pick({"scan_c": 0.1, "scan_aten": 0.2, "gru_c": 0.3, "gru_aten": 0.2})
    assert choice.scan_c and not choice.gru_c
    assert not selection.pick({"scan_c": 0.2, "scan_aten": 0.2, "gru_c": 0.2, "gru_aten": 0.2}).scan_c  # a tie: ATen


@needs_c
def test_the_choice_is_measured_once_per_machine_and_size_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SB3_MAMBA_CACHE_DIR", str(tmp_path))  # (the kernels stay loaded: only the choice moves)
    rssm = make_rssm()
    first = selection.choose(rssm, batch_size=4)
    assert len(list(tmp_path.glob("choice-*.json"))) == 1
    assert selection.choose(rssm, batch_size=4) == first  # read back, not measured again (timings would differ)
    selection.choose(rssm, batch_size=8)  # another size: its own measurement
    assert len(list(tmp_path.glob("choice-*.json"))) == 2


@needs_c
def test_the_measurement_leaves_the_global_random_state_alone():
    rssm = make_rssm()  # (draws from the global generator itself)
    torch.manual_seed(0)
    selection.measure(rssm, batch_size=2, rounds=1)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


@needs_c
def test_auto_runs_the_measured_choice_and_logs_it(capsys):
    env = make_vec_env("MetaRooms-1-v0", n_envs=1, seed=0, env_kwargs={"sub_episode_length": 10})
    model = MAMBA("RSSMPolicy", env, seed=0, verbose=1, **TINY)
    assert "measured here: posterior unroll on" in capsys.readouterr().out
    choice = selection.choose(model.policy.world_model.rssm, model.batch_size)
    assert model.kernels.observe.keywords == {"use_c": choice.scan_c}
    assert model.kernels.imagine.keywords == {"use_c": choice.gru_c}

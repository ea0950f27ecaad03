"""The C kernels: building (cached, atomic, opt-out, a clear fallback without a compiler) and the GRU
cell's kernels against the eager cell (the posterior scan's: test_kernels.py).

The loader tests replace the loader's own environment hooks (compiler, source, self-check) to
simulate machines without a compiler or with a broken one."""

from __future__ import annotations

import contextlib

import pytest
import torch

import sb3_mamba.kernels.native as native
from sb3_mamba.kernels.gru import folded_norm_bias, gru_step, project_hidden
from sb3_mamba.networks import LayerNormGRUCell, gru_update


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and no library loaded in this process yet."""
    monkeypatch.setenv("SB3_MAMBA_CACHE_DIR", str(tmp_path))
    native._library.cache_clear()
    yield tmp_path
    native._library.cache_clear()


@pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler on this machine")
def test_builds_once_into_the_cache(fresh):
    library = native.posterior_scan_library()
    assert library is not None and hasattr(library, "gru_cell") and hasattr(library, "gru_cell_backward")
    assert torch.classes.sb3_mamba.PosteriorScan is not None
    built = sorted(fresh.glob("*.so"))
    assert len(built) == 1 and not [p for p in fresh.iterdir() if p not in built]  # no temporary left behind
    mtime = built[0].stat().st_mtime_ns
    assert native.build(native._compiler()) == built[0] and built[0].stat().st_mtime_ns == mtime  # reused


def test_opt_out(fresh, monkeypatch):
    monkeypatch.setenv("SB3_MAMBA_NATIVE", "0")
    assert native.posterior_scan_library() is None
    assert not list(fresh.iterdir())


def test_no_compiler_warns_and_falls_back(fresh, monkeypatch):
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert native.posterior_scan_library() is None


@pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler on this machine")
def test_failed_build_warns_and_leaves_nothing(fresh, monkeypatch, tmp_path_factory):
    broken = tmp_path_factory.mktemp("src") / "posterior_scan.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    with pytest.warns(RuntimeWarning, match="could not build"):
        assert native.posterior_scan_library() is None
    assert not list(fresh.glob("*"))


needs_kernels = pytest.mark.skipif(native.posterior_scan_library() is None, reason="the C++ kernels did not build")


def make_cell() -> LayerNormGRUCell:
    torch.manual_seed(0)
    cell = LayerNormGRUCell(8, 32)
    with torch.no_grad():  # off the initialisation (unit norm, zero bias) so every term matters
        cell.norm.weight.uniform_(0.5, 1.5)
        cell.norm.bias.uniform_(-0.5, 0.5)
    return cell


@contextlib.contextmanager
def threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("thread_count", [1, 2])
def test_gru_cell_kernel_matches_the_eager_cell(dtype, thread_count):
    """The C GRU cell after its gate layer equals the eager cell (rows split over threads)."""
    cell = make_cell()
    x = torch.randn(1001, 8)  # rows not a multiple of the thread count
    h = torch.randn(1001, 64)[:, 16:48].tanh()  # a strided state
    with torch.no_grad(), threads(thread_count):
        gates = cell.linear(torch.cat([x, h], dim=-1)).to(dtype)
        kernel_out = native.gru_cell(gates, h, cell.norm.weight, folded_norm_bias(cell.norm.bias), cell.norm.eps)
        eager_out = gru_update(cell.norm(gates.float()), h)
    assert kernel_out is not None and kernel_out.dtype == torch.float32
    torch.testing.assert_close(kernel_out, eager_out, rtol=1e-5, atol=2e-6)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("thread_count", [1, 2])
def test_gru_cell_kernel_with_shared_states_matches_the_eager_cell_on_gathered_rows(dtype, thread_count):
    """Imagination's shared states: the kernel adds the state's gate half and reads the state through
    ``rows`` instead of gathering them to every row first; the result is the eager cell's on gathered rows."""
    cell = make_cell()
    x, h = torch.randn(1001, 8), torch.randn(37, 32).tanh()  # 1001 rows share 37 states
    rows = torch.randint(37, (1001,))
    with torch.no_grad(), threads(thread_count), torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
        proj = project_hidden(cell, h)
        input_gates = torch.nn.functional.linear(x, cell.linear.weight[:, :8])
        shared_out = native.gru_cell(
            input_gates,
            h,
            cell.norm.weight,
            folded_norm_bias(cell.norm.bias),
            cell.norm.eps,
            state_pre=proj.to(input_gates.dtype),
            rows=rows,
        )
        eager_out = cell(x, h[rows])
    # bfloat16: the kernel adds the two gate halves after rounding each (ATen's matmul rounds their sum)
    tolerance = dict(rtol=1e-5, atol=2e-6) if dtype == torch.float32 else dict(rtol=0, atol=1e-2)
    assert shared_out is not None
    torch.testing.assert_close(shared_out, eager_out, **tolerance)
    with pytest.raises(IndexError, match="rows must index"):
        native.gru_cell(
            torch.zeros(3, 96), h, cell.norm.weight, cell.norm.bias, 1e-3, proj.float(), torch.tensor([0, 37, 1])
        )


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("thread_count", [1, 2])
def test_gru_cell_kernel_backward_matches_autograd(dtype, thread_count):
    """A frozen cell that passes gradients (a continuous actor's imagination through the world model):
    the C forward and backward give the values and gradients of the eager cell under autograd."""
    cell = make_cell()
    cell.norm.requires_grad_(False)  # the world model is frozen in imagination; its gate layer may train
    x = torch.randn(1001, 8, requires_grad=True)
    h = torch.randn(1001, 64, requires_grad=True)
    upstream = torch.randn(1001, 32)

    def run(use_c: bool):
        with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
            state = h[:, 16:48].tanh()  # a strided state with a gradient
            out = gru_step(cell, x, state, use_c=use_c) if use_c else cell(x, state)
        return (out, *torch.autograd.grad(out, [x, h, cell.linear.weight], upstream))

    with threads(thread_count):
        kernel_results, eager_results = run(True), run(False)
    assert kernel_results[0].requires_grad
    # bfloat16: one rounding step of the output (eps 2^-7) may fall either way (seen on an AMD EPYC: 2 of
    # 3840 elements one ulp apart), so the tolerance is torch's own for bfloat16
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-3)
    for a, b in zip(kernel_results, eager_results, strict=True):  # output, d_x, d_h, d_weight
        torch.testing.assert_close(a, b, **tolerance)


@pytest.mark.parametrize("use_c", [False, pytest.param(True, marks=needs_kernels)])
@pytest.mark.parametrize("grad", [False, True])
def test_gru_step_equals_the_eager_cell(grad, use_c):
    """Every shortcut of gru_step (state projection, shared rows, C or ATen) gives the eager cell's result."""
    cell = make_cell()
    x, h, rows = torch.randn(300, 8), torch.randn(11, 32).tanh(), torch.randint(11, (300,))
    with torch.set_grad_enabled(grad):
        proj = project_hidden(cell, h)
        eager_out = cell(x, h[rows])
        for out in (
            gru_step(cell, x, h, proj, rows, use_c),
            gru_step(cell, x, h, None, rows, use_c),
            gru_step(cell, x, h[rows], proj[rows], None, use_c),
            gru_step(cell, x, h[rows], use_c=use_c),
        ):
            assert out.requires_grad == grad
            torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=2e-6)


def test_gru_cell_off_the_cpu_never_builds_the_kernels():
    """A GPU run must not try to compile (or warn about) CPU kernels it cannot use."""
    pre, h = torch.empty(4, 96, device="meta"), torch.empty(4, 32, device="meta")
    native._library.cache_clear()
    assert native.gru_cell(pre, h, torch.ones(96), torch.zeros(96), 1e-3) is None
    assert native._library.cache_info().currsize == 0  # never loaded, so never built


def test_the_self_check_catches_a_wrong_kernel():
    def zeroing_kernel(pre, h, *args):  # a "miscompiled" GRU kernel: writes zeros
        return torch.zeros_like(h)

    assert not native._agrees_with_eager(zeroing_kernel)


@needs_kernels
def test_kernels_that_disagree_with_eager_are_not_used(fresh, monkeypatch):
    """A library that fails the self-check is refused with a warning, not trained with."""
    monkeypatch.setattr(native, "_agrees_with_eager", lambda kernel: False)
    with pytest.warns(RuntimeWarning, match="disagree"):
        assert native.posterior_scan_library() is None


@needs_kernels
def test_the_kernels_split_rows_over_threads_in_torchs_openmp_runtime():
    """at::parallel_for is inline OpenMP: built without -fopenmp the library has no parallel region (its rows
    ran on one thread); built with it, the process still holds one OpenMP runtime, torch's."""
    native.posterior_scan_library()
    assert native._LOADED is not None and b"GOMP_parallel" in native._LOADED.read_bytes()
    runtimes = {line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line}
    assert len(runtimes) == 1


@needs_kernels
def test_the_built_kernels_pass_their_self_check():
    assert native._agrees_with_eager(native.posterior_scan_library().gru_cell)


@needs_kernels
def test_the_kernels_check_their_inputs():
    """A wrong dtype or shape is a clear error from the op's own checks, never a read out of bounds."""
    library = native.posterior_scan_library()
    with pytest.raises(RuntimeError, match="norm_weight must have shape"):
        library.gru_cell(torch.zeros(4, 96), torch.zeros(4, 32), torch.ones(95), torch.zeros(96), 1e-3)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        library.gru_cell(
            torch.zeros(4, 96, dtype=torch.float64), torch.zeros(4, 32), torch.ones(96), torch.zeros(96), 1e-3
        )
    scan = torch.classes.sb3_mamba.PosteriorScan(
        {"T": 2, "B": 3, "D": 4, "U": 5, "S": 2, "C": 3, "A": 1, "bf16": 0},
        {"unimix": 0.01, "grad_scale": 1.0, "eps_in": 1e-3, "eps_gru": 1e-3, "eps_post": 1e-3},
        {},
    )
    with pytest.raises(RuntimeError, match="deter must have shape \\[2, 3, 4\\]"):
        scan.attach({"deter": torch.zeros(2, 3, 5)})
    with pytest.raises(RuntimeError, match="no buffer named 'detre'"):
        scan.attach({"detre": torch.zeros(2, 3, 4)})
    with pytest.raises(RuntimeError, match="step 2 outside"):
        scan.forward_input(2)

"""The CUDA kernels' code, compiled for the host and run on host threads (csrc/emulation/), against the
CPU kernels and the reference. This checks the CUDA kernels' indexing, work split, warp shuffles,
partial sums and launches on any machine; tests/test_cuda.py checks them on a GPU."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import (CSRC, FORWARD_ARGS, GRADIENTS, assert_activation_layouts_agree, channels_last, dtype_id,
                      random_pose_scan_inputs, random_scan_configuration, random_scan_inputs, requires_extension,
                      requires_sources, sources_digest, with_projections_laid_out)
from conftest import scan_ops_forward_and_backward as forward_and_backward
from posemamba.paths import bidirectional_paths, span_lengths_hint
from posemamba.reference import multi_path_selective_scan_ref

pytestmark = [requires_extension, requires_sources]

# (rtol, atol relative to the largest value) between the emulated CUDA kernels and the CPU kernels:
# the same formulas, composed and summed in other orders.
TOLERANCE = {torch.float64: (1e-10, 1e-11), torch.float32: (1e-4, 2e-5), torch.float16: (4e-3, 2e-3),
             torch.bfloat16: (2e-2, 1e-2)}


# The emulation's sanitizer builds, by the value of POSEMAMBA_EMULATION_SANITIZED, each for a process that
# preloads its runtime (sanitizer_preloads): "address", AddressSanitizer and UndefinedBehaviorSanitizer
# (test_emulated_cuda_kernels_under_sanitizers), stopping at the first error; "thread", ThreadSanitizer:
# the race check (test_emulated_cuda_kernels_under_race_check).
SANITIZER_FLAGS = {
    "address": ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"],
    "thread": ["-fsanitize=thread"],
}
SANITIZED = "POSEMAMBA_EMULATION_SANITIZED"


def load_emulation():
    """The emulation module, built once per version of the sources and of torch (conftest's
    sources_digest); with a sanitizer where the environment names one in POSEMAMBA_EMULATION_SANITIZED."""
    from torch.utils.cpp_extension import load

    sanitizer = os.environ.get(SANITIZED, "")
    assert sanitizer in ("", *SANITIZER_FLAGS), f"{SANITIZED} must be one of {list(SANITIZER_FLAGS)}, got {sanitizer!r}"
    flags = SANITIZER_FLAGS.get(sanitizer, [])
    return load(name=f"posemamba_cuda_emulated_{sources_digest()}" + (f"_{sanitizer}" if sanitizer else ""),
                sources=[os.path.join(CSRC, "emulation", "scan_cuda_emulated.cpp"),
                         os.path.join(CSRC, "multi_path_scan_host.cpp")],
                extra_include_paths=[CSRC], extra_cflags=["-O1", "-g", *flags] if sanitizer else ["-O2"],
                extra_ldflags=flags, verbose=False)


@pytest.fixture(scope="module")
def emulated():
    return load_emulation()


@pytest.fixture(autouse=True)
def workspaces_start_as_nan():
    """Every tensor the kernels allocate uninitialised (at::empty: outputs and workspaces) starts as NaN
    (integers: their largest value), torch's deterministic mode's fill: a kernel that reads what no
    thread wrote shows in its results, as compute-sanitizer's initcheck shows it on a GPU."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    assert torch.utils.deterministic.fill_uninitialized_memory
    yield
    torch.use_deterministic_algorithms(was_deterministic)


def assert_close_scaled(actual, expected, dtype):
    rtol, atol = TOLERANCE[dtype]
    for a, e in zip(actual, expected, strict=True):
        scale = max(1.0, e.double().abs().max().item()) if e.numel() else 1.0
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol * scale)


# (batch, D, L, P, N): lanes past D in a block's 32 channels (D = 3, 5, 33, 40), L inside one 64-step
# chunk, past it and not a multiple of it, several chunks with a partial last one (L = 300), N from 1
# to 40 (N = 1 over several chunks: no barrier of the state-entry loop between two chunks; N = 20
# and 40: B and C staged in several groups of entries, 16 at a time, 4 in float64), P up to 8;
# and paths cut into spans (the emulation reports 4 multiprocessors, so a shape with
# fewer (batch, path, 32 channels) blocks is cut): two spans of 16 chunks (L = 2048), four spans of
# 3, 3, 3 and 2 chunks (L = 700).
SHAPES = [(1, 3, 1, 1, 1), (2, 33, 70, 2, 3), (1, 40, 67, 3, 20), (1, 5, 19, 8, 40), (1, 33, 300, 2, 4),
          (1, 4, 200, 2, 1), (1, 3, 2048, 2, 3), (1, 2, 700, 1, 5)]


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}_d{}_l{}_p{}_n{}".format(*s))
def test_emulated_cuda_kernels_match_cpu_kernels(emulated, shape, dtype):
    inputs = random_scan_inputs(*shape, dtype)
    grad_out = torch.randn(shape[0], shape[1], shape[2], dtype=torch.float64).to(dtype)
    actual = forward_and_backward(emulated, inputs, grad_out)
    expected = forward_and_backward(torch.ops.posemamba, inputs, grad_out)
    assert_close_scaled(actual, expected, dtype)


@pytest.mark.parametrize("span_lengths", [(), 16], ids=["chunked", "warp"])
def test_emulated_tiles_with_and_without_mixed_steps(emulated, span_lengths):
    # A warp loads the mixed-in u only for a tile where some step mixes: path 0 (positions in order)
    # mixes in its second half only, so its walk takes both kinds of tile, a tile where one step of 8
    # mixes and one where 4 do; path 1 (in reverse) never mixes.
    inputs = random_scan_inputs(1, 40, 120, 2, 16, torch.float32)
    inputs["paths"] = bidirectional_paths(torch.arange(120))
    mix = torch.full((2, 120), -1, dtype=torch.int64)
    mix[0, 60:] = torch.randint(0, 120, (60,))
    mix[0, 20] = 7  # alone in its tile
    inputs["mix"] = mix
    grad_out = torch.randn(1, 40, 120)
    actual = forward_and_backward(emulated, inputs, grad_out, span_lengths=span_lengths)
    assert_close_scaled(actual, forward_and_backward(torch.ops.posemamba, inputs, grad_out), torch.float32)


def forward_and_backward_reversed(emulated, *args, reversed_schedule=True, **kwargs):
    """forward_and_backward on the emulation with its blocks and threads run in reverse order (or, with
    reversed_schedule false, in index order)."""
    emulated.set_schedule_reversed(reversed_schedule)
    try:
        return forward_and_backward(emulated, *args, **kwargs)
    finally:
        emulated.set_schedule_reversed(False)


def assert_bitwise_equal(results, other_results):
    for index, (a, b) in enumerate(zip(results, other_results, strict=True)):
        assert torch.equal(a, b), index


@pytest.mark.parametrize("shape", [(2, 33, 70, 2, 3), (1, 4, 200, 2, 1), (1, 2, 700, 1, 5), (1, 5, 130, 2, 20)],
                         ids=lambda s: "b{}_d{}_l{}_p{}_n{}".format(*s))
def test_emulated_cuda_kernels_match_cpu_kernels_with_threads_reversed(emulated, shape):
    # Between barriers the emulation runs a block's threads in turn: in reverse, a read left unordered
    # with another thread's write by a missing barrier sees what it did not in thread order.
    inputs = random_scan_inputs(*shape, torch.float32)
    grad_out = torch.randn(shape[0], shape[1], shape[2])
    actual = forward_and_backward_reversed(emulated, inputs, grad_out)
    assert_close_scaled(actual, forward_and_backward(torch.ops.posemamba, inputs, grad_out), torch.float32)


# Configurations of random_scan_configuration whose grids have several blocks in each split and pass.
@pytest.mark.parametrize("seed", [3, 11, 14, 16])
def test_emulated_results_do_not_depend_on_the_schedule(emulated, seed):
    # A GPU runs a launch's blocks in any order, and at once, and a block's warps at their own pace: with
    # blocks and threads in reverse, every output and saved state is bitwise the same. A block reading
    # what another block of the launch writes, or two blocks or threads writing one place, shows here.
    inputs, grad_out, softplus, span_lengths = random_scan_configuration(seed)
    in_order = forward_and_backward(emulated, inputs, grad_out, softplus, span_lengths)
    assert_bitwise_equal(in_order, forward_and_backward_reversed(emulated, inputs, grad_out, softplus, span_lengths))


# span_length 9: the warp splits, 8 spans a path.
@pytest.mark.parametrize("span_length", [0, 9], ids=["chunked", "warp_span"])
@pytest.mark.parametrize("flags", [dict(with_D=False, with_z=False, with_bias=False, with_mix=False),
                                   dict(delta_softplus=False)], ids=["no_options", "no_softplus"])
def test_emulated_cuda_kernels_match_reference(emulated, flags, span_length):
    softplus = flags.get("delta_softplus", True)
    inputs = random_scan_inputs(2, 35, 66, 3, 4, torch.float64, **flags)
    grad_out = torch.randn(2, 35, 66, dtype=torch.float64)
    actual = forward_and_backward(emulated, inputs, grad_out, softplus, span_length)
    names = [name for name in GRADIENTS if inputs[name] is not None]
    leaves = {name: inputs[name].detach().requires_grad_(True) for name in names}
    out = multi_path_selective_scan_ref(**{**inputs, **leaves}, delta_softplus=softplus)
    expected = [out] + list(torch.autograd.grad(out, [leaves[name] for name in names], grad_out))
    assert_close_scaled(actual[:1] + actual[3:], expected, torch.float64)  # out and the gradients


# T = 243: PoseMamba's length, L = 4131 = 65 chunks (the last one partial) carried through the passes;
# by the chunked splits (no hint) and by the warp splits (the paths' hint, T: 17 spans of 243 steps,
# which start inside chunks; T = 5 is shorter than a tile, no use to them).
@pytest.mark.parametrize("T, hinted", [(5, False), (243, False), (243, True)], ids=["5", "243", "243_warp_span"])
def test_emulated_cuda_kernels_on_pose_paths_are_deterministic(emulated, T, hinted):
    J = 17
    inputs = random_pose_scan_inputs(1, 33, T, J, 16)
    grad_out = torch.randn(1, 33, T * J)
    span_lengths = span_lengths_hint(inputs["paths"]) if hinted else []
    first = forward_and_backward(emulated, inputs, grad_out, span_lengths=span_lengths)
    second = forward_and_backward(emulated, inputs, grad_out, span_lengths=span_lengths)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert_close_scaled(first, forward_and_backward(torch.ops.posemamba, inputs, grad_out), torch.float32)


# The warp splits of the forward and the backward (csrc/cuda/scan_warp_spans_cuda.cuh,
# scan_warp_spans_backward_cuda.cuh), taken where span_length cuts the paths into spans of at least 8
# steps, and cut further where its blocks would not fill the emulation's 4 "multiprocessors" (69 -> 18,
# 64 -> 22, 100 -> 25, 9 -> 8 below): spans of one tile, of several with a partial last one (13, kept:
# the last span 5 steps), of a chunk exactly (64, kept) and past it (chunk starts inside spans, where
# the forward saves the states and the backward restarts from them, a segment of 4 tiles at a time);
# lanes past D; N = 20 and 40 (groups of 16 entries walked in turn, 8 in the float64 backward, outputs
# and per-step gradients added); P = 8.
WARP_SPAN_CASES = [((2, 33, 70, 2, 3), 8), ((4, 64, 70, 2, 3), 13), ((1, 5, 200, 3, 4), 69),
                   ((1, 40, 300, 2, 20), 64), ((4, 64, 300, 2, 4), 64), ((1, 3, 150, 8, 40), 100),
                   ((2, 4, 130, 1, 1), 9)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("shape, span_length", WARP_SPAN_CASES, ids=lambda case: str(case))
def test_emulated_warp_span_split_matches_cpu_kernels(emulated, shape, span_length, dtype):
    inputs = random_scan_inputs(*shape, dtype)
    grad_out = torch.randn(shape[0], shape[1], shape[2], dtype=torch.float64).to(dtype)
    actual = forward_and_backward(emulated, inputs, grad_out, span_lengths=span_length)
    assert_close_scaled(actual, forward_and_backward(torch.ops.posemamba, inputs, grad_out), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=dtype_id)
@pytest.mark.parametrize("span_length", [0, 64], ids=["chunked", "warp_spans"])
def test_emulated_kernels_at_the_largest_state_size(emulated, span_length, dtype):
    # N = 64 (kMaxStateDim): B and C staged in 4 groups of 16 entries (16 of 4 in float64) in the
    # chunked splits, 4 walks of 16 register entries a lane in the warp splits, each after the first
    # adding to the outputs.
    inputs = random_scan_inputs(1, 33, 130, 2, 64, dtype)
    grad_out = torch.randn(1, 33, 130, dtype=torch.float64).to(dtype)
    actual = forward_and_backward(emulated, inputs, grad_out, span_lengths=span_length)
    assert_close_scaled(actual, forward_and_backward(torch.ops.posemamba, inputs, grad_out), dtype)


def test_emulated_warp_span_split_on_pose_paths_with_threads_reversed(emulated):
    # PoseMamba's paths with their own hint (T = 20 frames a span), the mix included, and the warps'
    # lanes taking turns in reverse: a missing __syncwarp shows. The model's own configuration (the
    # joint-major paths through the warp splits, several blocks a pass) is also bitwise the same in the
    # two schedules.
    T, J = 20, 5
    inputs = random_pose_scan_inputs(2, 35, T, J, 16)
    grad_out = torch.randn(2, 35, T * J)
    span_lengths = span_lengths_hint(inputs["paths"])
    actual = forward_and_backward_reversed(emulated, inputs, grad_out, span_lengths=span_lengths)
    assert_close_scaled(actual, forward_and_backward(torch.ops.posemamba, inputs, grad_out), torch.float32)
    assert_bitwise_equal(forward_and_backward(emulated, inputs, grad_out, span_lengths=span_lengths), actual)


@pytest.mark.parametrize("span_length", [0, 7, 70, 1000])
def test_emulated_kernels_take_the_chunked_split_for_other_span_lengths(emulated, span_length):
    # Spans shorter than a tile, or a single span, are no use to the warp splits: the chunked splits
    # run, bitwise as without a hint.
    inputs = random_scan_inputs(1, 33, 70, 2, 3, torch.float32)
    grad_out = torch.randn(1, 33, 70)
    hinted = forward_and_backward(emulated, inputs, grad_out, span_lengths=span_length)
    for a, b in zip(hinted, forward_and_backward(emulated, inputs, grad_out), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=dtype_id)
def test_emulated_kernels_split_paths_by_their_hints(emulated, dtype):
    # Three hints, three work splits launched in turn over their paths: spans of 13 and of 26 steps (two
    # warp splits) and none (the chunked split), with as many dA/dD/ddelta_bias partials as the most a
    # split writes (10, 5 and 8 here) and zeros past a split's own. P = 5, the paths of a split not
    # adjacent.
    inputs = random_scan_inputs(2, 40, 130, 5, 4, dtype)
    grad_out = torch.randn(2, 40, 130, dtype=dtype)
    actual = forward_and_backward(emulated, inputs, grad_out, span_lengths=[13, 0, 26, 13, 0])
    assert_close_scaled(actual, forward_and_backward(torch.ops.posemamba, inputs, grad_out), dtype)


def test_emulated_kernels_give_each_path_its_own_split(emulated):
    # Each path's rows of the saved states and of the per-path gradients are, to the bit, those of the
    # split its hint names, as if every path had that hint: the hinted paths' those of the warp split,
    # the others' those of the chunked split. (Batch 2 and 40 channels fill the emulation's blocks in
    # every case, so that no split cuts its spans differently for having fewer paths.)
    inputs = random_scan_inputs(2, 40, 130, 4, 3, torch.float32)
    grad_out = torch.randn(2, 40, 130)
    per_path = forward_and_backward(emulated, inputs, grad_out, span_lengths=[0, 13, 0, 13])
    chunked = forward_and_backward(emulated, inputs, grad_out)
    warp = forward_and_backward(emulated, inputs, grad_out, span_lengths=13)
    # After out and out_ungated: chunk_states, then du, ddelta, dA, dB, dC, dD, dz, ddelta_bias; the path
    # is the first dimension of dA, dD and ddelta_bias, the second of the others (du and dz sum the paths).
    path_dims = {2: 1, 4: 1, 5: 0, 6: 1, 7: 1, 8: 0, 10: 0}
    for index, dim in path_dims.items():
        for paths, expected in (([0, 2], chunked), ([1, 3], warp)):
            rows = torch.tensor(paths)
            assert torch.equal(per_path[index].index_select(dim, rows), expected[index].index_select(dim, rows)), index
    assert_close_scaled(per_path, forward_and_backward(torch.ops.posemamba, inputs, grad_out), torch.float32)


# Configurations drawn at random from the seed in the test id (conftest's random_scan_configuration):
# shape, dtype, options, hints per path and (one seed in three) the threads' order in reverse, all
# together, where the tests above vary a few at a time. 650 such draws on the host found nothing; these
# keep drawing.
@pytest.mark.parametrize("seed", range(12))
def test_emulated_kernels_on_random_configurations(emulated, seed):
    inputs, grad_out, softplus, span_lengths = random_scan_configuration(seed)
    actual = forward_and_backward_reversed(emulated, inputs, grad_out, softplus, span_lengths,
                                           reversed_schedule=seed % 3 == 2)
    expected = forward_and_backward(torch.ops.posemamba, inputs, grad_out, softplus)
    assert_close_scaled(actual, expected, inputs["u"].dtype)


@pytest.mark.parametrize("shape", [(2, 3, 0, 2, 4), (0, 3, 5, 2, 4)], ids=["empty_length", "empty_batch"])
def test_emulated_cuda_kernels_on_empty_inputs(emulated, shape):
    inputs = random_scan_inputs(*shape, torch.float32)
    grad_out = torch.randn(shape[0], shape[1], shape[2])
    actual = forward_and_backward(emulated, inputs, grad_out)
    assert_close_scaled(actual, forward_and_backward(torch.ops.posemamba, inputs, grad_out), torch.float32)
    dA = actual[3 + list(GRADIENTS).index("A")]
    assert torch.equal(dA, torch.zeros_like(dA))  # sums over nothing


@pytest.mark.parametrize("span_lengths", [[], [16, 0]], ids=["chunked", "warp_and_chunked"])
def test_emulated_forward_without_saving_gives_the_same_output(emulated, span_lengths):
    # Inference: the scan kernels skip the saved states and the merge the ungated output, bitwise the
    # same out (each split: spans of 16 steps by warps for path 0, chunks for path 1).
    inputs = random_scan_inputs(2, 33, 150, 2, 16, torch.float32, with_mix=True)
    args = [inputs[name] for name in FORWARD_ARGS]
    out, out_ungated, chunk_states = emulated.multi_path_scan_fwd(*args, True, span_lengths)
    lean = emulated.multi_path_scan_fwd(*args, True, span_lengths, save_for_backward=False)
    assert torch.equal(lean[0], out) and out_ungated.shape == out.shape and chunk_states.shape == (2, 2, 3, 16, 33)
    assert lean[1].shape == (0,) and lean[2].shape == (0,)


@pytest.mark.parametrize("rank", [3, 40], ids=["one_tile_of_ranks", "two_tiles_of_ranks"])
@pytest.mark.parametrize("span_lengths", [[], [16, 0]], ids=["chunked", "warp_and_chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_emulated_low_rank_step_sizes_match_cpu_kernels(emulated, span_lengths, rank, dtype):
    # Both devices' kernels project low-rank step sizes as they read them (the CUDA ones staging 32 ranks
    # a tile: R = 40 takes two); the CUDA backward writes the full ddelta and the op takes the
    # projection's gradients from it by matmuls, the CPU one sums them as it goes: the same outputs and
    # gradients, the low-rank delta's and the weight's included, to rounding.
    inputs = random_scan_inputs(2, 33, 150, 2, 4, dtype)
    generator = torch.Generator().manual_seed(rank)
    inputs["delta"] = torch.randn(2, 2, rank, 150, generator=generator).to(dtype)
    weight = (torch.randn(2, 33, rank, generator=generator) / rank ** 0.5).to(dtype)
    args = [inputs[name] for name in FORWARD_ARGS]
    grad_out = torch.randn(2, 33, 150, generator=generator).to(dtype)
    results = []
    for ops in (emulated, torch.ops.posemamba):
        out, out_ungated, chunk_states = ops.multi_path_scan_fwd(*args, True, span_lengths, True, weight)
        grads = ops.multi_path_scan_bwd(grad_out, *args, out_ungated, chunk_states, True, span_lengths, weight)
        results.append([out, out_ungated, chunk_states, *grads])
    d_delta_low, d_weight = results[0][4], results[0][-1]
    assert d_delta_low.shape == (2, 2, rank, 150) and d_weight.shape == (2, 33, rank)
    assert_close_scaled(results[0], results[1], dtype)


@pytest.mark.parametrize("layout", ["positions_major", "projection_rows", "shared_across_batch", "B_and_C_apart"])
@pytest.mark.parametrize("span_lengths", [[], [16, 0]], ids=["chunked", "warp_and_chunked"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=dtype_id)
def test_emulated_kernels_read_B_and_C_in_their_strides(emulated, layout, span_lengths, dtype):
    # The CUDA kernels read B and C where they lie (the model's projection rows, a positions-major copy,
    # a batch stride of 0), staging a chunk's entries first where a position's entries are one run of
    # memory: the same values in the same shared slots, so the results of contiguous B and C, bitwise.
    # B and C in different strides are both made contiguous first. N = 20: a second group of entries,
    # partly past N, in float (16 a group) and in float64 (4).
    inputs = random_scan_inputs(2, 33, 150, 2, 20, dtype, with_mix=True)
    if layout == "shared_across_batch":
        inputs = {**inputs, **{name: inputs[name][:1].expand_as(inputs[name]) for name in "BC"}}
    laid_out = {
        "positions_major": with_projections_laid_out(inputs, "positions_major"),
        "projection_rows": with_projections_laid_out(inputs, "projection_rows"),
        "shared_across_batch": inputs,
        "B_and_C_apart": {**with_projections_laid_out(inputs, "positions_major"), "C": inputs["C"]},
    }[layout]
    grad_out = torch.randn(2, 33, 150, generator=torch.Generator().manual_seed(5)).to(dtype)
    actual = forward_and_backward(emulated, laid_out, grad_out, span_lengths=span_lengths)
    contiguous = {**inputs, **{name: inputs[name].contiguous() for name in "BC"}}
    expected = forward_and_backward(emulated, contiguous, grad_out, span_lengths=span_lengths)
    for a, e in zip(actual, expected, strict=True):
        assert torch.equal(a, e)


@pytest.mark.parametrize("rank", [3, 40], ids=["one_tile_of_ranks", "two_tiles_of_ranks"])
@pytest.mark.parametrize("delta_in_rows", [True, False], ids=["delta_in_rows", "delta_apart"])
@pytest.mark.parametrize("span_lengths", [[], [16, 0]], ids=["chunked", "warp_and_chunked"])
def test_emulated_low_rank_delta_read_in_the_projection_rows(emulated, span_lengths, delta_in_rows, rank):
    # The low-rank delta, B and C as views of one projection's rows (the model's): the kernels read all
    # three where they lie, the ranks strided as B's and C's entries (R = 40: the second tile of ranks
    # from a base 32 entries on); with delta contiguous beside row views of B and C, all three are
    # copied. Bitwise the kernels' results of contiguous inputs; the weight's gradient is a matmul
    # with delta, which may sum in another order for another layout.
    inputs = random_scan_inputs(2, 33, 150, 2, 4, torch.float32)
    generator = torch.Generator().manual_seed(rank)
    inputs["delta"] = torch.randn(2, 2, rank, 150, generator=generator)
    weight = torch.randn(2, 33, rank, generator=generator) / rank ** 0.5
    rows = with_projections_laid_out(inputs, "projection_rows")
    if not delta_in_rows:
        rows["delta"] = inputs["delta"]
    grad_out = torch.randn(2, 33, 150, generator=generator)
    results = []
    for given in (rows, inputs):
        args = [given[name] for name in FORWARD_ARGS]
        out, out_ungated, chunk_states = emulated.multi_path_scan_fwd(*args, True, span_lengths, True, weight)
        grads = emulated.multi_path_scan_bwd(grad_out, *args, out_ungated, chunk_states, True, span_lengths, weight)
        results.append([out, out_ungated, chunk_states, *grads])
    for a, e in zip(results[0][:-1], results[1][:-1], strict=True):
        assert torch.equal(a, e)
    assert_close_scaled(results[0][-1:], results[1][-1:], torch.float32)


@pytest.mark.parametrize("variant", ["mixed", "unmixed", "low_rank"])
@pytest.mark.parametrize("span_lengths", [[], [16, 0]], ids=["chunked", "warp_and_chunked"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=dtype_id)
def test_emulated_kernels_read_u_channels_last(emulated, dtype, span_lengths, variant):
    # u as the transpose of a contiguous (batch, L, D) tensor (as mamba layers and PoseMamba's
    # convolution leave it): the CUDA kernels read it by position, a lane per channel, where a (batch,
    # D, L) u goes through the step tiles: the same values in the same lanes, so bitwise the results of
    # a contiguous u, with and without mixed-in steps and with low-rank step sizes (z and grad_out
    # contiguous: test_emulated_kernels_read_and_write_activations_channels_last). D = 33: a block's
    # lanes past D.
    inputs = random_scan_inputs(2, 33, 150, 2, 4, dtype, with_mix=variant != "unmixed")
    generator = torch.Generator().manual_seed(7)
    weight = None
    if variant == "low_rank":
        inputs["delta"] = torch.randn(2, 2, 5, 150, generator=generator).to(dtype)
        weight = (torch.randn(2, 33, 5, generator=generator) / 5 ** 0.5).to(dtype)
    grad_out = torch.randn(2, 33, 150, generator=generator).to(dtype)
    results = []
    for u in (channels_last(inputs["u"]), inputs["u"]):
        args = [u if name == "u" else inputs[name] for name in FORWARD_ARGS]
        out, out_ungated, chunk_states = emulated.multi_path_scan_fwd(*args, True, span_lengths, True, weight)
        grads = emulated.multi_path_scan_bwd(grad_out, *args, out_ungated, chunk_states, True, span_lengths, weight)
        results.append([out, out_ungated, chunk_states, *grads])
    for a, e in zip(*results, strict=True):
        assert torch.equal(a, e)


@pytest.mark.parametrize("layouts", ["z", "grad_out", "out", "du_dz", "all", "no_gate"])
@pytest.mark.parametrize("span_lengths", [[], [16, 0]], ids=["chunked", "warp_and_chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_emulated_kernels_read_and_write_activations_channels_last(emulated, dtype, span_lengths, layouts):
    # z and grad_out given channels-last (as PoseMamba's layers give them) are read where they lie: the
    # backward scans read dout and z by position, a lane per channel, where (batch, D, L) ones go
    # through the step tiles; the merges turn their tiles between channel rows and position rows. out,
    # du and dz asked channels-last are written so. Bitwise the results of contiguous ones, in each
    # layout and with all at once; without a gate, grad_out and du. Batch 2 at L = 150: the merges'
    # tiles of 32 positions cross a batch element's end; D = 33: tiles and blocks with one channel.
    inputs = random_scan_inputs(2, 33, 150, 2, 4, dtype, with_mix=True, with_z=layouts != "no_gate")
    inputs["u"] = channels_last(inputs["u"])
    grad_out = torch.randn(2, 33, 150, generator=torch.Generator().manual_seed(3)).to(dtype)
    last = {"du_dz": {"du", "dz"}, "all": {"z", "grad_out", "out", "du", "dz"},
            "no_gate": {"grad_out", "out", "du"}}.get(layouts, {layouts})
    assert_activation_layouts_agree(emulated, inputs, grad_out, last, span_lengths)


def test_emulated_channels_last_out_as_the_cpu_kernels_write_it(emulated):
    inputs = random_scan_inputs(2, 33, 70, 2, 4, torch.float32)
    args = [inputs[name] for name in FORWARD_ARGS]
    out_last = emulated.multi_path_scan_fwd(*args, True, [], channels_last_out=True)[0]
    cpu_last = torch.ops.posemamba.multi_path_scan_fwd(*args, True, [], True, None, True)[0]
    assert out_last.stride() == cpu_last.stride()
    assert_close_scaled([out_last], [cpu_last], torch.float32)


def test_emulated_low_rank_projection_ignores_autocast(emulated):
    # The gradients through the projection are ATen matmuls inside the op: an autocast region around
    # the call must not turn them into another dtype than the inputs'.
    inputs = random_scan_inputs(1, 20, 40, 2, 4, torch.float32)
    generator = torch.Generator().manual_seed(0)
    inputs["delta"] = torch.randn(1, 2, 3, 40, generator=generator)
    weight = torch.randn(2, 20, 3, generator=generator)
    args = [inputs[name] for name in FORWARD_ARGS]
    out, out_ungated, chunk_states = emulated.multi_path_scan_fwd(*args, True, [], True, weight)
    grad_out = torch.randn_like(out)
    grads = emulated.multi_path_scan_bwd(grad_out, *args, out_ungated, chunk_states, True, [], weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = emulated.multi_path_scan_fwd(*args, True, [], True, weight)
        grads_under_autocast = emulated.multi_path_scan_bwd(grad_out, *args, out_ungated, chunk_states, True, [],
                                                            weight)
    assert_bitwise_equal([out, out_ungated, chunk_states], under_autocast)
    assert_bitwise_equal(grads, grads_under_autocast)


def test_emulated_cuda_kernel_asserts_on_a_bad_path_index(emulated):
    inputs = random_scan_inputs(1, 2, 8, 1, 2, torch.float32)
    inputs["paths"][0, 3] = 8
    with pytest.raises(RuntimeError, match="device assert failed: l >= 0 && l < L"):
        emulated.multi_path_scan_fwd(*[inputs[name] for name in FORWARD_ARGS], True, [])


def test_emulated_cuda_kernels_assert_on_paths_that_are_not_permutations(emulated):
    # In range, so the scan runs, but position 3 is visited twice and position 4 never: the merge of
    # the paths' outputs finds no step for it.
    inputs = random_scan_inputs(1, 2, 8, 1, 2, torch.float32)
    inputs["paths"][0, inputs["paths"][0] == 4] = 3
    with pytest.raises(RuntimeError, match="device assert failed: visiting_step >= 0"):
        emulated.multi_path_scan_fwd(*[inputs[name] for name in FORWARD_ARGS], True, [])


def test_emulated_cuda_kernel_asserts_on_a_bad_mix_index(emulated):
    inputs = random_scan_inputs(1, 2, 8, 1, 2, torch.float32)
    inputs["mix"][0, 5] = 8
    with pytest.raises(RuntimeError, match="device assert failed: mixed < L"):
        emulated.multi_path_scan_fwd(*[inputs[name] for name in FORWARD_ARGS], True, [])


@pytest.mark.parametrize("bad", ["path", "mix"])
def test_emulated_warp_splits_assert_on_bad_indices(emulated, bad):
    # The warp splits load positions tiles ahead and check them where used: the checks still stop the
    # forward, and the backward (given the forward's outputs from good indices; a bad path stops it
    # earlier, where it inverts the paths).
    inputs = random_scan_inputs(1, 2, 40, 1, 2, torch.float32)
    args = [inputs[name] for name in FORWARD_ARGS]
    out, out_ungated, chunk_states = emulated.multi_path_scan_fwd(*args, True, [16])
    if bad == "path":
        inputs["paths"][0, 29] = 40
    else:
        inputs["mix"][0, 29] = 40
    message = "l >= 0 && l < L" if bad == "path" else "mixed < L"
    with pytest.raises(RuntimeError, match=f"device assert failed: {message}"):
        emulated.multi_path_scan_fwd(*args, True, [16])
    message = "l >= 0 && l < seqlen" if bad == "path" else "mixed < L"
    with pytest.raises(RuntimeError, match=f"device assert failed: {message}"):
        emulated.multi_path_scan_bwd(torch.randn_like(out), *args, out_ungated, chunk_states, True, [16])


def test_emulated_warp_shuffles_and_votes_follow_cuda(emulated):
    out = emulated.simt_selftest("shuffles")
    threads = torch.arange(64)
    lane, warp_base = threads % 32, threads - threads % 32
    up, down = lane - 3, lane + 3
    expected = torch.stack([
        warp_base + (lane ^ 5),
        torch.where(up >= 0, warp_base + up, threads),       # lanes without a source keep their value
        torch.where(down < 32, warp_base + down, threads),
        warp_base + (7 * lane) % 32,
        (warp_base == 32).long(),  # only the second warp has thread 40
        torch.zeros(64, dtype=torch.long),
    ])
    assert torch.equal(out, expected)


def test_emulated_barriers_order_shared_memory(emulated):
    out = emulated.simt_selftest("shared_memory")
    t = torch.arange(64)
    expected = torch.stack([(63 - t) ** 2 + 1000 * block for block in range(3)])
    assert torch.equal(out, expected)


def test_emulated_warp_barrier_orders_shared_memory(emulated):
    out = emulated.simt_selftest("warp_barrier")
    assert torch.equal(out[0], torch.arange(64) ^ 1)


def test_emulated_device_assert_stops_the_launch(emulated):
    # Threads 0 to 6 run (in thread order) before thread 7 fails its assert; no thread runs after it.
    out = emulated.simt_selftest("assert_stops_the_launch")[0]
    assert torch.equal(out[:7], torch.arange(7)) and torch.equal(out[7:], torch.zeros(57, dtype=torch.long))


def test_emulation_reports_a_thread_past_its_stack(emulated):
    with pytest.raises(RuntimeError, match="thread 1 ran past its 131072-byte stack"):
        emulated.simt_selftest("stack_overflow")


def test_emulation_reports_deadlocks_and_device_asserts(emulated):
    with pytest.raises(RuntimeError, match="deadlock: in block \\(0, 0, 0\\)"):
        emulated.simt_selftest("deadlock")
    # Warp 1's threads reach the kernel's second __syncthreads, where warp 0's wait at its first.
    with pytest.raises(RuntimeError, match="threads of a block met at different barriers: thread 32 reached "
                                           "__syncthreads at .*simt_selftest.h:[0-9]+, where others wait at "
                                           "__syncthreads at .*simt_selftest.h:[0-9]+"):
        emulated.simt_selftest("divergent_barriers")
    with pytest.raises(RuntimeError, match="device assert failed: threadIdx.x != 7"):
        emulated.simt_selftest("assert")


# In a process of its own (the kernels read the variable once per process), with the emulation that the
# fixture built: whole paths (0), the default split (two spans here) and six spans, each against the CPU
# kernels; the splits round differently, which shows that the setting took effect. A bad value is a
# named error.
SPAN_SETTING_CHECK = """
import sys, torch
sys.path.insert(0, {tests!r})
import test_cuda_emulation as t
inputs, grad_out = torch.load({inputs!r})
actual = t.forward_and_backward(t.load_emulation(), inputs, grad_out, span_lengths={span_length})
t.assert_close_scaled(actual, t.forward_and_backward(torch.ops.posemamba, inputs, grad_out), torch.float32)
torch.save(actual, {output!r})
"""


def run_with_span_setting(setting, folder, variable="POSEMAMBA_CUDA_SPAN_BLOCKS_PER_SM", span_length=0):
    """Runs the check with one value of the variable on inputs saved in folder/inputs.pt; the emulated
    kernels' results go to folder/setting_SETTING.pt."""
    env = dict(os.environ, **{variable: setting})
    check = SPAN_SETTING_CHECK.format(tests=os.path.dirname(os.path.abspath(__file__)), span_length=span_length,
                                      inputs=str(folder / "inputs.pt"), output=str(folder / f"setting_{setting}.pt"))
    return subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=600)


def test_emulated_cuda_kernels_follow_the_span_setting(emulated, tmp_path):
    torch.save((random_scan_inputs(1, 3, 2048, 2, 3, torch.float32), torch.randn(1, 3, 2048)), tmp_path / "inputs.pt")
    results = {}
    for setting in ("0", "", "3"):
        result = run_with_span_setting(setting, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        results[setting] = torch.load(tmp_path / f"setting_{setting}.pt")
    for a, b in (("0", ""), ("", "3")):
        assert any(not torch.equal(x, y) for x, y in zip(results[a], results[b], strict=True))


def test_emulated_cuda_kernels_name_a_bad_span_setting(emulated, tmp_path):
    torch.save((random_scan_inputs(1, 3, 70, 2, 3, torch.float32), torch.randn(1, 3, 70)), tmp_path / "inputs.pt")
    result = run_with_span_setting("two", tmp_path)
    assert result.returncode != 0
    assert "POSEMAMBA_CUDA_SPAN_BLOCKS_PER_SM must be a whole number from 0 to 64, got 'two'" in result.stderr


def test_emulated_kernels_follow_the_warp_split_setting(emulated, tmp_path):
    # With a span length the warp splits run ("" and "1"), unless POSEMAMBA_CUDA_WARP_SPANS=0, which
    # gives the chunked splits' results to the bit, or "forward", the forward's warp split alone (its
    # outputs and saved states those of "1", the gradients the chunked backward's); a bad value is a
    # named error. Each result is checked against the CPU kernels in its process.
    torch.save((random_scan_inputs(2, 40, 130, 2, 3, torch.float32), torch.randn(2, 40, 130)), tmp_path / "inputs.pt")
    results = {}
    for setting in ("0", "", "1", "forward"):
        result = run_with_span_setting(setting, tmp_path, "POSEMAMBA_CUDA_WARP_SPANS", span_length=26)
        assert result.returncode == 0, result.stderr[-3000:]
        results[setting] = torch.load(tmp_path / f"setting_{setting}.pt")
    unhinted = forward_and_backward(emulated, *torch.load(tmp_path / "inputs.pt"))
    assert all(torch.equal(x, y) for x, y in zip(results["0"], unhinted, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(results[""], results["1"], strict=True))
    forward_outputs = 2  # out and chunk_states, then the gradients
    for split in ("0", "1"):  # both splits differ from the chunked ones: each setting took effect
        gradients_differ = any(not torch.equal(x, y) for x, y in zip(results["forward"][forward_outputs:],
                                                                     results[split][forward_outputs:], strict=True))
        assert gradients_differ
    assert all(torch.equal(x, y) for x, y in zip(results["forward"][:forward_outputs], results["1"][:forward_outputs]))
    result = run_with_span_setting("yes", tmp_path, "POSEMAMBA_CUDA_WARP_SPANS", span_length=26)
    assert result.returncode != 0
    assert "POSEMAMBA_CUDA_WARP_SPANS must be 0, 1 or forward, got 'yes'" in result.stderr


# A sample of the tests above, rerun in a process of its own on the emulation built with AddressSanitizer
# and UndefinedBehaviorSanitizer: on any machine, what compute-sanitizer's memcheck checks on a GPU (a
# read or write past a tensor or a workspace, an index past a shared-memory array's dimension; see
# csrc/emulation/simt_emulation.h), and overflowing integer index arithmetic. Every split and pass: the
# chunked ones (one span and spans cut), the warp splits (tiles partial, spans across chunks, several
# groups of state entries, P = 8, N = 40), per-path splits, the half types' and float64's tiles, empty
# inputs, the device asserts and the stacks' guard. Some minutes, so asked for:
# POSEMAMBA_TEST_SANITIZERS=1 (.ci/run sets it).
SANITIZED_TESTS = [
    "test_emulated_cuda_kernels_match_cpu_kernels[b2_d33_l70_p2_n3-float32]",
    "test_emulated_cuda_kernels_match_cpu_kernels[b1_d40_l67_p3_n20-float32]",
    "test_emulated_cuda_kernels_match_cpu_kernels[b1_d5_l19_p8_n40-float64]",
    "test_emulated_cuda_kernels_match_cpu_kernels[b1_d33_l300_p2_n4-bfloat16]",
    "test_emulated_cuda_kernels_match_cpu_kernels[b1_d2_l700_p1_n5-float16]",
    "test_emulated_cuda_kernels_match_cpu_kernels_with_threads_reversed[b1_d5_l130_p2_n20]",
    "test_emulated_cuda_kernels_match_reference[no_options-warp_span]",
    *(f"test_emulated_warp_span_split_matches_cpu_kernels[{shape}-{span_length}-float32]"
      for shape, span_length in WARP_SPAN_CASES),
    "test_emulated_warp_span_split_matches_cpu_kernels[(1, 3, 150, 8, 40)-100-float64]",
    "test_emulated_warp_span_split_matches_cpu_kernels[(1, 40, 300, 2, 20)-64-bfloat16]",
    "test_emulated_warp_span_split_on_pose_paths_with_threads_reversed",
    "test_emulated_kernels_at_the_largest_state_size[chunked-float32]",
    "test_emulated_kernels_at_the_largest_state_size[warp_spans-float64]",
    "test_emulated_kernels_split_paths_by_their_hints[float32]",
    "test_emulated_low_rank_step_sizes_match_cpu_kernels[float32-warp_and_chunked-two_tiles_of_ranks]",
    "test_emulated_kernels_read_B_and_C_in_their_strides[float32-warp_and_chunked-projection_rows]",
    "test_emulated_kernels_read_B_and_C_in_their_strides[float64-chunked-shared_across_batch]",
    "test_emulated_low_rank_delta_read_in_the_projection_rows[warp_and_chunked-delta_in_rows-two_tiles_of_ranks]",
    "test_emulated_kernels_read_u_channels_last[float32-warp_and_chunked-mixed]",
    "test_emulated_kernels_read_and_write_activations_channels_last[float32-warp_and_chunked-all]",
    "test_emulated_kernels_read_and_write_activations_channels_last[bfloat16-chunked-grad_out]",
    *(f"test_emulated_kernels_on_random_configurations[{seed}]" for seed in range(4)),
    "test_emulated_cuda_kernels_on_empty_inputs[empty_length]",
    "test_emulated_cuda_kernels_on_empty_inputs[empty_batch]",
    "test_emulated_cuda_kernel_asserts_on_a_bad_path_index",
    "test_emulated_cuda_kernels_assert_on_paths_that_are_not_permutations",
    "test_emulated_warp_splits_assert_on_bad_indices[path]",
    "test_emulated_warp_splits_assert_on_bad_indices[mix]",
    "test_emulated_warp_shuffles_and_votes_follow_cuda",
    "test_emulated_tiles_with_and_without_mixed_steps[warp]",
    "test_emulated_barriers_order_shared_memory",
    "test_emulation_reports_deadlocks_and_device_asserts",
    "test_emulation_reports_a_thread_past_its_stack",
]


# The same sample on the race check's build (ThreadSanitizer; simt_emulation.h): what compute-sanitizer's
# racecheck and synccheck check on a GPU, a thread's read or write of shared or global memory that
# another thread of its block wrote or read with no __syncthreads or __syncwarp between them, whichever
# thread ran first. But two tests: the stack guard's, whose thread writes over a finished thread's stack
# on purpose, and paths that are not permutations, where two threads of invert_paths_kernel write the
# same entry of the inverse (either value: the position no step visits keeps -1, which path_step
# asserts on). And every random configuration: the race check does not depend on the threads' order,
# so each draw of shape, options and splits checks all of its barriers.
RACE_CHECKED_TESTS = [*(name for name in SANITIZED_TESTS
                        if name not in ("test_emulation_reports_a_thread_past_its_stack",
                                        "test_emulated_cuda_kernels_assert_on_paths_that_are_not_permutations")),
                      *(f"test_emulated_kernels_on_random_configurations[{seed}]" for seed in range(4, 12))]
# The race check's own test kernels (simt_selftest.h), each with a race it must report.
RACES = ("unordered_shared_memory", "shuffle_ordered_shared_memory")


def sanitizer_preloads(runtime):
    """The C++ compiler's sanitizer runtime (libasan.so, libtsan.so) and its libstdc++, to preload
    (python is built with neither: the runtime must come first, and must find the C++ runtime whose
    exceptions it intercepts), or None where the compiler has no such runtime."""
    found = []
    for library in (runtime, "libstdc++.so"):
        try:
            path = subprocess.run([os.environ.get("CXX", "c++"), f"-print-file-name={library}"], capture_output=True,
                                  text=True, timeout=60).stdout.strip()
        except OSError:
            return None
        if not (os.path.isabs(path) and os.path.exists(path)):
            return None
        found.append(path)
    return " ".join(found)


def sanitized_environment(sanitizer, runtime, **options):
    """The environment of a process that runs the emulation's `sanitizer` build; skips the test where the
    runtime cannot start python at all (some kernels' address-space layouts defeat older runtimes): that
    says nothing of the kernels, as gpu_report.py skips a compute-sanitizer that cannot run."""
    preloads = sanitizer_preloads(runtime)
    assert preloads, f"POSEMAMBA_TEST_SANITIZERS=1 needs the C++ compiler's {runtime} (c++ -print-file-name found none)"
    env = dict(os.environ, LD_PRELOAD=preloads, **options, **{SANITIZED: sanitizer})
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True,
                           timeout=600)
    if probe.returncode != 0:
        pytest.skip(f"the {runtime} runtime cannot run python here: {probe.stderr[-1000:]}")
    return env


def run_tests_in(env, names):
    """Runs the named tests of this file in a process with env; asserts that every one passed."""
    tests = [f"{os.path.abspath(__file__)}::{name}" for name in names]
    # Uncaptured (-s): a sanitizer's report ends the process at once, and must reach this process's pipe.
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *tests], env=env,
                            capture_output=True, text=True, timeout=1800)
    output = result.stdout + result.stderr
    # An unknown test name fails the run too.
    assert result.returncode == 0 and f"{len(names)} passed" in output, output[-6000:]


def test_sanitized_samples_name_tests_of_this_file():
    # The sanitizer runs are asked for (CI): a renamed test would only fail there, minutes in.
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             os.path.abspath(__file__)], capture_output=True, text=True)
    collected = {line.split("::", 1)[1] for line in result.stdout.splitlines() if "::" in line}
    wanted = {*SANITIZED_TESTS, *RACE_CHECKED_TESTS, "test_emulated_warp_barrier_orders_shared_memory"}
    assert wanted <= collected, sorted(wanted - collected)


sanitizers_asked_for = pytest.mark.skipif(os.environ.get("POSEMAMBA_TEST_SANITIZERS") != "1",
                                          reason="some minutes: set POSEMAMBA_TEST_SANITIZERS=1 to run it")


@sanitizers_asked_for
def test_emulated_cuda_kernels_under_sanitizers():
    run_tests_in(sanitized_environment("address", "libasan.so", ASAN_OPTIONS="detect_leaks=0",
                                       UBSAN_OPTIONS="print_stacktrace=1"), SANITIZED_TESTS)


@sanitizers_asked_for
def test_emulated_cuda_kernels_under_race_check():
    # One CPU thread: torch's own threads are not instrumented, so ThreadSanitizer would not see their
    # synchronisation.
    env = sanitized_environment("thread", "libtsan.so", TSAN_OPTIONS="halt_on_error=1:exitcode=66",
                                OMP_NUM_THREADS="1")
    # First that it finds races: each test kernel's, reported in that kernel.
    for race in RACES:
        check = f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); " \
                f"import test_cuda_emulation as t; t.load_emulation().simt_selftest({race!r})"
        result = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=1800)
        assert result.returncode == 66, result.stderr[-3000:]
        assert "ThreadSanitizer: data race" in result.stderr and f"{race}_kernel" in result.stderr, result.stderr[-3000:]
    run_tests_in(env, ["test_emulated_warp_barrier_orders_shared_memory", *RACE_CHECKED_TESTS])

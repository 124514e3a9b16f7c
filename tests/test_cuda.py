"""The CUDA kernels against the reference and the CPU kernels. Skipped without a GPU."""
import functools

import pytest
import torch

import posemamba
from posemamba.ops import multi_path_selective_scan
from posemamba.reference import multi_path_selective_scan_ref

from conftest import (FORWARD_ARGS, assert_activation_layouts_agree, dtype_id, random_pose_scan_inputs,
                      random_scan_configuration, random_scan_inputs, with_projections_laid_out)
from conftest import scan_ops_forward_and_backward as forward_and_backward

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and posemamba.HAS_EXTENSION
         and torch._C._dispatch_has_kernel_for_dispatch_key("posemamba::multi_path_scan_fwd", "CUDA")),
    reason="needs a GPU and posemamba's CUDA kernels")

DIFFERENTIABLE = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# (rtol, atol relative to the largest reference value), forward and gradients, as on the CPU.
TOLERANCE = {torch.float64: (1e-9, 1e-10), torch.float32: (1e-3, 2e-4), torch.float16: (5e-3, 3e-3),
             torch.bfloat16: (3e-2, 2e-2)}
SHAPES = [(1, 3, 1, 1, 1), (2, 33, 67, 4, 16), (3, 5, 130, 2, 20), (1, 40, 129, 8, 64)]


def to_cuda(inputs):
    """The inputs on the GPU in their own strides (Tensor.cuda() makes a view that is not dense contiguous,
    as the projection rows' B and C)."""
    return {k: (torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device="cuda").copy_(v)
                if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def outputs_and_grads(fn, inputs, grad_out):
    names = [n for n in DIFFERENTIABLE if inputs[n] is not None]
    leaves = {n: inputs[n].detach().requires_grad_(True) for n in names}
    out = fn(**{**inputs, **leaves})
    return [out] + list(torch.autograd.grad(out, [leaves[n] for n in names], grad_out))


def assert_close_scaled(actual, expected, dtype):
    rtol, atol = TOLERANCE[dtype]
    for a, e in zip(actual, expected):
        scale = max(1.0, e.double().abs().max().item()) if e.numel() else 1.0
        torch.testing.assert_close(a.to(e.dtype).cpu(), e.cpu(), rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}_d{}_l{}_p{}_n{}".format(*s))
def test_cuda_matches_reference(shape, dtype):
    inputs = to_cuda(random_scan_inputs(*shape, dtype))
    grad_out = torch.randn(shape[0], shape[1], shape[2], device="cuda", dtype=dtype)
    actual = outputs_and_grads(multi_path_selective_scan, inputs, grad_out)
    expected = outputs_and_grads(multi_path_selective_scan_ref, inputs, grad_out)
    assert_close_scaled(actual, expected, dtype)


@pytest.mark.parametrize("flags", [dict(with_D=False, with_z=False, with_bias=False, with_mix=False),
                                   dict(delta_softplus=False)])
def test_cuda_options(flags):
    softplus = flags.get("delta_softplus", True)
    inputs = to_cuda(random_scan_inputs(2, 7, 70, 3, 5, torch.float64, **flags))
    grad_out = torch.randn(2, 7, 70, device="cuda", dtype=torch.float64)
    run = lambda fn: outputs_and_grads(lambda **kw: fn(**kw, delta_softplus=softplus), inputs, grad_out)  # noqa: E731
    assert_close_scaled(run(multi_path_selective_scan), run(multi_path_selective_scan_ref), torch.float64)


@pytest.mark.parametrize("T", [27, 243])  # L = 243 x 17 = 4131: 65 chunks, the last one partial
def test_cuda_pose_shapes_match_cpu_kernels_and_are_deterministic(T):
    J = 17
    inputs = random_pose_scan_inputs(2, 64, T, J, 16)
    grad_out = torch.randn(2, 64, T * J)
    cpu = outputs_and_grads(multi_path_selective_scan, inputs, grad_out)
    gpu_inputs = to_cuda(inputs)
    first = outputs_and_grads(multi_path_selective_scan, gpu_inputs, grad_out.cuda())
    second = outputs_and_grads(multi_path_selective_scan, gpu_inputs, grad_out.cuda())
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert_close_scaled(first, cpu, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=dtype_id)
@pytest.mark.parametrize("shape, span_length", [((2, 33, 70, 2, 3), 8), ((1, 5, 200, 3, 4), 69),
                                                ((1, 40, 300, 2, 20), 64), ((2, 64, 459, 4, 64), 27),
                                                ((2, 40, 130, 5, 4), [13, 0, 26, 13, 0])],
                         ids=lambda case: str(case))
def test_cuda_warp_span_split_matches_cpu_kernels(shape, span_length, dtype):
    # The forward's and the backward's warp splits, which span-length hints select (posemamba.ops
    # gives PoseMamba's paths theirs; tests/test_cuda_emulation.py covers the cases in more detail),
    # for every path or per path (three splits, the chunked one too): outputs, saved states and every
    # gradient, each bitwise the same in a second run.
    inputs = random_scan_inputs(*shape, dtype)
    grad_out = torch.randn(shape[0], shape[1], shape[2], dtype=torch.float64).to(dtype)
    gpu_inputs = to_cuda(inputs)

    cpu = forward_and_backward(torch.ops.posemamba, inputs, grad_out)
    gpu = forward_and_backward(torch.ops.posemamba, gpu_inputs, grad_out.cuda(), span_lengths=span_length)
    again = forward_and_backward(torch.ops.posemamba, gpu_inputs, grad_out.cuda(), span_lengths=span_length)
    for a, b in zip(gpu, again, strict=True):
        assert torch.equal(a, b)
    assert_close_scaled(gpu, cpu, dtype)


@pytest.mark.parametrize("seed", range(24))
def test_cuda_random_configurations_match_cpu_kernels(seed):
    # Shape, dtype, options and a hint per path drawn together (conftest's random_scan_configuration;
    # the host emulation runs the first twelve): every output, saved state and gradient.
    inputs, grad_out, softplus, span_lengths = random_scan_configuration(seed)
    gpu = forward_and_backward(torch.ops.posemamba, to_cuda(inputs), grad_out.cuda(), softplus, span_lengths)
    assert_close_scaled(gpu, forward_and_backward(torch.ops.posemamba, inputs, grad_out, softplus), inputs["u"].dtype)


def test_cuda_warp_span_split_on_long_spans_matches_cpu_kernels():
    # Enough warps to fill the GPU without cutting the hint's spans further (the cases above are cut to
    # spans of one tile on a large GPU): spans of 100 steps, which start inside chunks and hold two
    # segments of the backward's states.
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    dim, n_paths, length, span_length = 128, 4, 600, 100
    warps_per_element = n_paths * dim // 32 * (length // span_length)
    batch = 2 * 8 * sms // warps_per_element + 1  # two 8-warp forward blocks a multiprocessor
    inputs = random_scan_inputs(batch, dim, length, n_paths, 16, torch.float32)
    grad_out = torch.randn(batch, dim, length)
    gpu = forward_and_backward(torch.ops.posemamba, to_cuda(inputs), grad_out.cuda(), span_lengths=span_length)
    assert_close_scaled(gpu, forward_and_backward(torch.ops.posemamba, inputs, grad_out), torch.float32)


def test_cuda_whole_path_blocks_match_cpu_kernels():
    # Enough (batch, path, 32 channels) blocks to fill the GPU, so each block walks its whole path (the
    # training shapes' regime; smaller shapes cut the paths into spans).
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    dim, n_paths = 64, 4
    batch = sms // (n_paths * dim // 32) + 1
    inputs = random_scan_inputs(batch, dim, 200, n_paths, 16, torch.float32)
    grad_out = torch.randn(batch, dim, 200)
    cpu = outputs_and_grads(multi_path_selective_scan, inputs, grad_out)
    assert_close_scaled(outputs_and_grads(multi_path_selective_scan, to_cuda(inputs), grad_out.cuda()), cpu,
                        torch.float32)


@pytest.mark.parametrize("span_lengths", [[], [16, 0]], ids=["chunked", "warp_and_chunked"])
def test_cuda_forward_without_saving_gives_the_same_output(span_lengths):
    inputs = to_cuda(random_scan_inputs(2, 33, 150, 2, 16, torch.float32))
    args = [inputs[k] for k in FORWARD_ARGS]
    out, _, _ = torch.ops.posemamba.multi_path_scan_fwd(*args, True, span_lengths)
    lean_out, lean_ungated, lean_states = torch.ops.posemamba.multi_path_scan_fwd(*args, True, span_lengths, False)
    assert torch.equal(lean_out, out) and lean_ungated.numel() == 0 and lean_states.numel() == 0


@pytest.mark.parametrize("layout", ["positions_major", "projection_rows"])
@pytest.mark.parametrize("span_lengths", [[], [16, 0]], ids=["chunked", "warp_and_chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_cuda_reads_B_and_C_in_their_strides(layout, span_lengths, dtype):
    # B and C read where they lie (the model's projection rows, positions-major): bitwise the results of
    # contiguous ones (tests/test_cuda_emulation.py checks more layouts on the host).
    inputs = random_scan_inputs(2, 33, 150, 2, 20, dtype, with_mix=True)
    grad_out = torch.randn(2, 33, 150).to(dtype).cuda()
    laid_out = forward_and_backward(torch.ops.posemamba, to_cuda(with_projections_laid_out(inputs, layout)), grad_out,
                                    span_lengths=span_lengths)
    contiguous = forward_and_backward(torch.ops.posemamba, to_cuda(inputs), grad_out, span_lengths=span_lengths)
    for a, e in zip(laid_out, contiguous, strict=True):
        assert torch.equal(a, e)


@pytest.mark.parametrize("layouts", ["z", "grad_out_and_out", "all", "no_gate"])
@pytest.mark.parametrize("span_lengths", [[], [16, 0]], ids=["chunked", "warp_and_chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_cuda_reads_and_writes_activations_channels_last(layouts, span_lengths, dtype):
    # u, z and grad_out read where they lie, out, du and dz written channels-last where asked: bitwise the
    # results of (batch, D, L) ones (tests/test_cuda_emulation.py checks each layout on the host).
    inputs = to_cuda(random_scan_inputs(2, 33, 150, 2, 4, dtype, with_mix=True, with_z=layouts != "no_gate"))
    grad_out = torch.randn(2, 33, 150).to(dtype).cuda()
    last = {"z": {"u", "z"}, "grad_out_and_out": {"grad_out", "out"}, "all": {"u", "z", "grad_out", "out", "du", "dz"},
            "no_gate": {"u", "grad_out", "out", "du"}}[layouts]
    assert_activation_layouts_agree(torch.ops.posemamba, inputs, grad_out, last, span_lengths)


def model_outputs_and_grads(model, clip, device):
    model = model.to(device)
    model.zero_grad()
    out = model(clip.to(device))
    out.square().sum().backward()
    return [out.detach().cpu()] + [p.grad.detach().cpu() for p in model.parameters()]


def test_cuda_model_training_step_matches_cpu(monkeypatch):
    # The whole model on the GPU (its index tensors on the device, the gather by advanced indexing, the
    # low-rank step sizes projected by the kernels) against the same model on the CPU kernels; in full float32
    # (no TF32 in cuDNN's convolution).
    from posemamba.model import PoseMamba

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    model = PoseMamba(num_frame=27, dim=32, depth=2, drop_path_rate=0.0)
    with torch.no_grad():  # move every parameter off its initial value, so that each term matters
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    clip = torch.randn(2, 27, 17, 2)
    cpu = model_outputs_and_grads(model, clip, "cpu")
    gpu = model_outputs_and_grads(model, clip, "cuda")
    for a, e in zip(gpu, cpu):
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(a, e, rtol=1e-3, atol=1e-3 * scale)


@pytest.mark.parametrize("span_lengths", [None, 16], ids=["chunked", "warp"])
@pytest.mark.parametrize("rank", [3, 40])  # one tile of ranks, and two (the kernels stage 32 at a time)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_low_rank_step_sizes_match_cpu(rank, span_lengths, dtype):
    inputs = random_scan_inputs(2, 40, 130, 4, 16, dtype)
    weight = (torch.randn(4, 40, rank) / rank ** 0.5).to(dtype)
    inputs["delta"] = torch.randn(2, 4, rank, 130).to(dtype)

    def run(inputs, weight):
        names = [n for n in DIFFERENTIABLE if inputs[n] is not None]
        leaves = {n: inputs[n].detach().requires_grad_(True) for n in names}
        weight = weight.detach().requires_grad_(True)
        out = multi_path_selective_scan(**{**inputs, **leaves}, delta_proj_weight=weight, span_lengths=span_lengths)
        return [out, *torch.autograd.grad(out, [*leaves.values(), weight], torch.ones_like(out))]

    assert_close_scaled(run(to_cuda(inputs), weight.cuda()), run(inputs, weight), dtype)


@pytest.mark.parametrize("seqlen", [37, 200])
def test_cuda_selective_scan_last_state_matches_cpu(seqlen):
    from posemamba.ops import selective_scan

    inputs = random_scan_inputs(2, 6, seqlen, 1, 5, torch.float32)
    args = dict(u=inputs["u"], delta=inputs["delta"][:, 0], A=inputs["A"][0], B=inputs["B"][:, 0],
                C=inputs["C"][:, 0], D=inputs["D"][0], delta_bias=inputs["delta_bias"][0], delta_softplus=True)
    cpu = selective_scan(**args, return_last_state=True)
    assert_close_scaled(selective_scan(**to_cuda(args), return_last_state=True), cpu, torch.float32)


def test_cuda_empty_batch():
    inputs = random_scan_inputs(0, 3, 5, 2, 4, torch.float32)
    grad_out = torch.randn(0, 3, 5)
    cpu = outputs_and_grads(multi_path_selective_scan, inputs, grad_out)
    assert_close_scaled(outputs_and_grads(multi_path_selective_scan, to_cuda(inputs), grad_out.cuda()), cpu,
                        torch.float32)


def test_cuda_graph_capture_replays_forward_and_backward():
    # A CUDA graph captures the op's forward and backward and replays them on new values, to the bit
    # what eager calls give: every launch takes the current (capturing) stream, and nothing waits on
    # the host once the warm-up has checked the paths and found their hints (once per tensor). Both
    # splits: PoseMamba's paths, two of them cut into spans.
    T, J = 20, 5
    inputs = random_pose_scan_inputs(2, 35, T, J, 16, device="cuda")
    grad_out = torch.randn(2, 35, T * J, device="cuda")
    names = [n for n in DIFFERENTIABLE if inputs[n] is not None]
    leaves = {n: inputs[n].detach().clone().requires_grad_(True) for n in names}

    def forward_backward():
        out = multi_path_selective_scan(**{**inputs, **leaves})
        return [out, *torch.autograd.grad(out, [leaves[n] for n in names], grad_out)]

    warm_up = torch.cuda.Stream()
    warm_up.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm_up):
        forward_backward()
    torch.cuda.current_stream().wait_stream(warm_up)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = forward_backward()

    fresh = random_scan_inputs(2, 35, T * J, 4, 16, torch.float32, device="cuda")
    with torch.no_grad():
        for n in names:
            leaves[n].copy_(fresh[n])
    graph.replay()
    torch.cuda.synchronize()
    expected = outputs_and_grads(multi_path_selective_scan, {**inputs, **{n: fresh[n] for n in names}}, grad_out)
    for a, e in zip(captured, expected, strict=True):
        assert torch.equal(a, e)


def test_cuda_torch_compile_fullgraph_with_hints():
    # Compiled, the op cannot read the paths for their hints: the caller gives them, and the CUDA
    # kernels take the same splits as in eager mode (bitwise the same results).
    T, J = 20, 5
    inputs = random_pose_scan_inputs(2, 35, T, J, 16, device="cuda")
    compiled = torch.compile(functools.partial(multi_path_selective_scan, span_lengths=[0, T, 0, T]), fullgraph=True)
    grad_out = torch.randn(2, 35, T * J, device="cuda")
    actual = outputs_and_grads(compiled, inputs, grad_out)
    for a, e in zip(actual, outputs_and_grads(multi_path_selective_scan, inputs, grad_out), strict=True):
        assert torch.equal(a, e)


def test_cuda_gradcheck():
    inputs = to_cuda(random_scan_inputs(1, 3, 9, 2, 3, torch.float64))
    names = [n for n in DIFFERENTIABLE if inputs[n] is not None]

    def scan(*tensors):
        return multi_path_selective_scan(**{**inputs, **dict(zip(names, tensors))})

    leaves = [inputs[n].detach().requires_grad_(True) for n in names]
    assert torch.autograd.gradcheck(scan, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_cuda_gradcheck_warp_span_split():
    inputs = to_cuda(random_scan_inputs(1, 3, 40, 2, 3, torch.float64))
    names = [n for n in DIFFERENTIABLE if inputs[n] is not None]

    def scan(*tensors):
        return multi_path_selective_scan(**{**inputs, **dict(zip(names, tensors))}, span_lengths=[9, 0])

    leaves = [inputs[n].detach().requires_grad_(True) for n in names]
    assert torch.autograd.gradcheck(scan, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_cuda_opcheck():
    inputs = to_cuda(random_scan_inputs(2, 3, 70, 2, 4, torch.float32))
    args = tuple(inputs[k] for k in FORWARD_ARGS) + (True,)
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_fwd.default, args)
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_fwd.default, args + ([16, 16],))  # the warp split
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_fwd.default, args + ([16, 0],))  # and the chunked one
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_fwd.default, args + ([16, 0], False))  # inference
    out, out_ungated, chunk_states = torch.ops.posemamba.multi_path_scan_fwd(*args, [16, 0])
    backward_args = (torch.randn_like(out), *args[:-1], out_ungated, chunk_states, True)
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_bwd.default, backward_args)
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_bwd.default, backward_args + ([16, 16],))
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_bwd.default, backward_args + ([16, 0],))
    # out channels-last (copied so from the kernels' output).
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_fwd.default, args + ([16, 0], True, None, True))
    # Low-rank step sizes (projected by the kernels; their gradients by matmuls from the full ddelta).
    weight = torch.randn(2, 3, 2, device="cuda")
    low_rank = (args[0], torch.randn(2, 2, 2, 70, device="cuda"), *args[2:])
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_fwd.default, low_rank + ([16, 0], True, weight))
    out, out_ungated, chunk_states = torch.ops.posemamba.multi_path_scan_fwd(*low_rank, [16, 0], True, weight)
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_bwd.default,
                          (torch.randn_like(out), *low_rank[:-1], out_ungated, chunk_states, True, [16, 0], weight))

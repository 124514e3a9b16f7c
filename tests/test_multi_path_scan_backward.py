"""Gradients of the compiled multi-path scan: gradcheck, the reference's autograd, opcheck, compile."""
import functools

import pytest
import torch

from posemamba.ops import multi_path_selective_scan, pose_mix, pose_paths
from posemamba.reference import multi_path_selective_scan_ref

from conftest import as_projection_rows, channels_last, random_scan_inputs, requires_extension

pytestmark = requires_extension

DIFFERENTIABLE = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

# (rtol, atol relative to the largest reference gradient) for the kernel's gradients against the
# reference's autograd, from the same inputs. Both accumulate in float (double for float64); half
# types round du, ddelta, dB, dC and dz once more on output.
BACKWARD_TOLERANCE = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-3, 1e-4),
    torch.float16: (5e-3, 2e-3),
    torch.bfloat16: (3e-2, 1.6e-2),
}


def differentiable_inputs(inputs):
    names = [name for name in DIFFERENTIABLE if inputs[name] is not None]
    for name in names:
        inputs[name].requires_grad_(True)
    return names


def gradients(fn, inputs, names, grad_out, delta_softplus=True):
    out = fn(**inputs, delta_softplus=delta_softplus)
    return out, torch.autograd.grad(out, [inputs[name] for name in names], grad_out)


def assert_gradients_match_reference(inputs, delta_softplus=True):
    names = differentiable_inputs(inputs)
    grad_out = torch.randn_like(inputs["u"])
    _, kernel_grads = gradients(multi_path_selective_scan, inputs, names, grad_out, delta_softplus)
    _, reference_grads = gradients(multi_path_selective_scan_ref, inputs, names, grad_out, delta_softplus)
    rtol, atol = BACKWARD_TOLERANCE[inputs["u"].dtype]
    for name, kernel_grad, reference_grad in zip(names, kernel_grads, reference_grads):
        assert kernel_grad.dtype == inputs[name].dtype, name
        scale = max(1.0, reference_grad.double().abs().max().item())
        torch.testing.assert_close(kernel_grad, reference_grad, rtol=rtol, atol=atol * scale,
                                   msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("options", [
    dict(),
    dict(with_D=False, with_z=False, with_bias=False, with_mix=False),
    dict(with_mix=False, delta_softplus=False),
    dict(with_z=False, with_bias=False, delta_softplus=False),
])
@pytest.mark.parametrize("shape", [(1, 2, 1, 1, 1), (2, 3, 7, 2, 3), (1, 2, 67, 3, 2)],
                         ids=lambda s: "b{}_d{}_l{}_p{}_n{}".format(*s))
def test_gradcheck_float64(shape, options):
    delta_softplus = options.get("delta_softplus", True)
    inputs = random_scan_inputs(*shape, torch.float64, **options)
    names = differentiable_inputs(inputs)

    def scan(*tensors):
        return multi_path_selective_scan(**{**inputs, **dict(zip(names, tensors))}, delta_softplus=delta_softplus)

    assert torch.autograd.gradcheck(scan, [inputs[name] for name in names], eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
# The last shape has the CPU backward's tasks take two channel blocks each, summing dB and dC into one
# partial (channel_blocks_per_task: 5 blocks of 16 channels, batch 4), the last task one block.
@pytest.mark.parametrize("shape", [(2, 3, 17, 4, 16), (1, 18, 130, 2, 5), (3, 33, 65, 3, 64), (4, 80, 33, 2, 16)],
                         ids=lambda s: "b{}_d{}_l{}_p{}_n{}".format(*s))
def test_gradients_match_reference(shape, dtype):
    assert_gradients_match_reference(random_scan_inputs(*shape, dtype))


def test_gradients_pose_paths_without_softplus():
    T, J = 5, 17
    inputs = random_scan_inputs(2, 17, T * J, 4, 16, torch.float64, delta_softplus=False)
    inputs["paths"] = pose_paths(T, J)
    inputs["mix"] = pose_mix(T, J, torch.randperm(J))
    assert_gradients_match_reference(inputs, delta_softplus=False)


def test_softplus_threshold_gradient():
    # Above torch's softplus threshold (20) dt = x and its derivative is 1: both branches in one scan.
    inputs = random_scan_inputs(1, 2, 9, 2, 3, torch.float64, with_mix=False)
    inputs["delta"][..., ::2] += 25.0
    inputs["A"].mul_(0.01)
    assert_gradients_match_reference(inputs)


@pytest.mark.parametrize("rank", [0, 5], ids=["full", "low_rank"])
@pytest.mark.parametrize("batch, dim", [(2, 40), (4, 80)], ids=["block_a_task", "blocks_grouped"])
def test_backward_is_bitwise_deterministic_across_thread_counts(batch, dim, rank):
    inputs = random_scan_inputs(batch, dim, 150, 4, 16, torch.float32)
    if rank:
        inputs, inputs["delta_proj_weight"] = low_rank_step_sizes(inputs, rank)
    names = differentiable_inputs(inputs) + (["delta_proj_weight"] if rank else [])
    if rank:
        inputs["delta_proj_weight"].requires_grad_(True)
    grad_out = torch.randn_like(inputs["u"])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, single = gradients(multi_path_selective_scan, inputs, names, grad_out)
        torch.set_num_threads(max(2, threads))
        _, multi = gradients(multi_path_selective_scan, inputs, names, grad_out)
    finally:
        torch.set_num_threads(threads)
    for name, a, b in zip(names, single, multi):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("with_optionals", [False, True])
def test_opcheck_forward_and_backward(with_optionals):
    inputs = random_scan_inputs(2, 3, 70, 2, 4, torch.float32, with_D=with_optionals, with_z=with_optionals,
                                with_bias=with_optionals, with_mix=with_optionals)
    differentiable_inputs(inputs)
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["paths"],
            inputs["D"], inputs["z"], inputs["delta_bias"], inputs["mix"], True)
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_fwd.default, args)

    out, out_ungated, chunk_states = torch.ops.posemamba.multi_path_scan_fwd(*[
        a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args[:-1]]
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_bwd.default,
                          (torch.randn_like(out), *detached, out_ungated, chunk_states, True))
    # With the forward's span-length hints, which CPU kernels take and ignore.
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_bwd.default,
                          (torch.randn_like(out), *detached, out_ungated, chunk_states, True, [16, 0]))


@pytest.mark.parametrize("span_lengths, rank, layout", [(None, 0, "contiguous"), ([0, 10], 0, "contiguous"),
                                                        ([0, 10], 3, "contiguous"), ([0, 10], 3, "channels_last")],
                         ids=["no_hints", "hints", "hints_low_rank", "hints_low_rank_channels_last"])
def test_torch_compile_fullgraph(span_lengths, rank, layout):
    # Also with the GPU's work-split hints given, as under torch.compile they must be (the op cannot
    # read paths there); with low-rank step sizes, whose autograd.Function compiles too; and with u and
    # z channels-last, whose gradients the backward op is asked for in their layouts (the fake kernel's
    # strides, as the compiled graph takes them, those of the kernels' outputs).
    inputs = random_scan_inputs(2, 4, 30, 2, 8, torch.float32)
    if layout == "channels_last":
        inputs.update(u=channels_last(inputs["u"]), z=channels_last(inputs["z"]))
    if rank:
        inputs, weight = low_rank_step_sizes(inputs, rank)
        inputs["delta_proj_weight"] = weight
    names = differentiable_inputs(inputs) + (["delta_proj_weight"] if rank else [])
    if rank:
        inputs["delta_proj_weight"].requires_grad_(True)
    compiled = torch.compile(functools.partial(multi_path_selective_scan, span_lengths=span_lengths), fullgraph=True)
    out = compiled(**inputs)
    expected = multi_path_selective_scan(**inputs)
    torch.testing.assert_close(out, expected)
    grad_out = torch.randn_like(out)
    compiled_grads = torch.autograd.grad(out, [inputs[name] for name in names], grad_out)
    eager_grads = torch.autograd.grad(expected, [inputs[name] for name in names], grad_out)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)
        assert a.stride() == b.stride()


def test_compiled_graph_gives_the_op_its_span_lengths():
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append(graph_module.code)
        return graph_module.forward

    inputs = random_scan_inputs(1, 4, 30, 2, 8, torch.float32)
    compiled = torch.compile(functools.partial(multi_path_selective_scan, span_lengths=[0, 10]), backend=record,
                             fullgraph=True)
    torch.testing.assert_close(compiled(**inputs), multi_path_selective_scan(**inputs))
    assert len(graphs) == 1 and "multi_path_scan_fwd" in graphs[0] and "[0, 10]" in graphs[0]


def test_second_derivatives_stop_with_an_error_naming_the_op():
    # The backward kernels have no derivative of their own: a backward through the gradients must
    # stop, not treat them as constants (silently wrong second derivatives).
    inputs = random_scan_inputs(1, 3, 30, 2, 4, torch.float64)
    leaves = [inputs[name] for name in differentiable_inputs(inputs)]
    out = multi_path_selective_scan(**inputs)
    grad_out = torch.randn_like(out)
    first = torch.autograd.grad(out, leaves, grad_out, retain_graph=True)
    with_graph = torch.autograd.grad(out, leaves, grad_out, create_graph=True)
    for a, b in zip(first, with_graph):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match=r"multi-path scan has first derivatives only: its backward "
                                           r"\(multi_path_scan_bwd\) is not differentiable"):
        sum(g.sum() for g in with_graph).backward()


def low_rank_step_sizes(inputs, rank, seed=0):
    """inputs with delta replaced by mamba's low-rank step sizes and their (P, D, R) projection."""
    g = torch.Generator().manual_seed(seed)
    batch, n_paths, dim, seqlen = inputs["delta"].shape
    dtype = inputs["u"].dtype
    weight = (torch.randn(n_paths, dim, rank, generator=g, dtype=torch.float64) * rank ** -0.5).to(dtype)
    low = torch.randn(batch, n_paths, rank, seqlen, generator=g, dtype=torch.float64).to(dtype)
    return {**inputs, "delta": low}, weight


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_low_rank_step_sizes_match_the_reference_and_the_full_ones(dtype):
    inputs, weight = low_rank_step_sizes(random_scan_inputs(2, 6, 130, 3, 4, dtype), rank=3)
    names = differentiable_inputs(inputs)
    weight.requires_grad_(True)
    grad_out = torch.randn_like(inputs["u"])
    leaves = [inputs[name] for name in names] + [weight]
    out = multi_path_selective_scan(**inputs, delta_proj_weight=weight)
    grads = torch.autograd.grad(out, leaves, grad_out)
    reference = multi_path_selective_scan_ref(**inputs, delta_proj_weight=weight)
    expected = torch.autograd.grad(reference, leaves, grad_out)
    rtol, atol = BACKWARD_TOLERANCE[dtype]
    for actual, wanted in zip((out, *grads), (reference, *expected)):
        torch.testing.assert_close(actual, wanted, rtol=rtol, atol=atol * wanted.abs().max().item())
    # The op given the projected step sizes agrees (the kernels sum the projection in their own order).
    full = {**inputs, "delta": torch.matmul(weight, inputs["delta"])}
    full_out = multi_path_selective_scan(**full)
    full_grads = torch.autograd.grad(full_out, leaves, grad_out)
    for actual, wanted in zip((out, *grads), (full_out, *full_grads)):
        torch.testing.assert_close(actual, wanted, rtol=rtol, atol=atol * wanted.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
# A block narrower than 16 channels; R past one group of 16 sums; the backward's tasks taking two channel
# blocks each (batch 4, 6 blocks), adding their low-rank delta gradients into one partial.
@pytest.mark.parametrize("shape, rank", [((2, 20, 37, 3, 4), 3), ((1, 18, 130, 2, 5), 17), ((4, 96, 33, 2, 16), 6)],
                         ids=["narrow_block", "rank_past_a_sum_group", "blocks_grouped"])
def test_low_rank_kernels_match_the_reference(shape, rank, dtype):
    inputs, weight = low_rank_step_sizes(random_scan_inputs(*shape, dtype), rank)
    inputs["delta_proj_weight"] = weight
    names = differentiable_inputs(inputs) + ["delta_proj_weight"]
    weight.requires_grad_(True)
    grad_out = torch.randn_like(inputs["u"])
    out, grads = gradients(multi_path_selective_scan, inputs, names, grad_out)
    reference, expected = gradients(multi_path_selective_scan_ref, inputs, names, grad_out)
    rtol, atol = BACKWARD_TOLERANCE[dtype]
    for name, actual, wanted in zip(["out"] + names, (out, *grads), (reference, *expected)):
        assert actual.dtype == wanted.dtype and actual.shape == wanted.shape, name
        scale = max(1.0, wanted.double().abs().max().item())
        torch.testing.assert_close(actual, wanted, rtol=rtol, atol=atol * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("with_optionals", [False, True])
def test_low_rank_opcheck(with_optionals):
    inputs = random_scan_inputs(2, 18, 70, 2, 4, torch.float32, with_D=with_optionals, with_z=with_optionals,
                                with_bias=with_optionals, with_mix=with_optionals)
    inputs, weight = low_rank_step_sizes(inputs, rank=3)
    differentiable_inputs(inputs)
    weight.requires_grad_(True)
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["paths"],
            inputs["D"], inputs["z"], inputs["delta_bias"], inputs["mix"], True)
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_fwd.default, args + ([], True, weight))
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args[:-1]]
    out, out_ungated, chunk_states = torch.ops.posemamba.multi_path_scan_fwd(*detached, True, [], True,
                                                                             weight.detach())
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_bwd.default,
                          (torch.randn_like(out), *detached, out_ungated, chunk_states, True, [], weight.detach()))


def test_low_rank_step_sizes_gradcheck():
    inputs, weight = low_rank_step_sizes(random_scan_inputs(1, 3, 20, 2, 3, torch.float64), rank=2, seed=1)
    names = differentiable_inputs(inputs)
    weight.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda *leaves: multi_path_selective_scan(**{**inputs, **dict(zip(names, leaves))}, delta_proj_weight=leaves[-1]),
        (*[inputs[name] for name in names], weight))


@requires_extension
def test_low_rank_step_sizes_are_not_kept_for_the_backward():
    # The full (batch, P, D, L) step sizes are made again in the backward: nothing of that shape is saved.
    inputs, weight = low_rank_step_sizes(random_scan_inputs(2, 6, 70, 3, 4, torch.float32), rank=2)
    differentiable_inputs(inputs)
    weight.requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(tuple(t.shape)), t)[1], lambda t: t):
        out = multi_path_selective_scan(**inputs, delta_proj_weight=weight)
    assert saved and (2, 3, 6, 70) not in saved
    out.sum().backward()
    assert weight.grad is not None and inputs["delta"].grad.shape == (2, 3, 2, 70)


def contiguous_results(inputs, rank):
    """inputs, with rank's low-rank step sizes (0: the full ones), the names of those differentiable,
    a random grad_out, and the op's out and gradients given them all contiguous: what another layout of
    the same values must give."""
    if rank:
        inputs, inputs["delta_proj_weight"] = low_rank_step_sizes(inputs, rank)
        inputs["delta_proj_weight"].requires_grad_(True)
    names = differentiable_inputs(inputs) + (["delta_proj_weight"] if rank else [])
    grad_out = torch.randn_like(inputs["u"])
    out, grads = gradients(multi_path_selective_scan, inputs, names, grad_out)
    return inputs, names, grad_out, out, grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_z, rank", [(True, 0), (False, 0), (True, 3)], ids=["gate", "no_gate", "gate_low_rank"])
def test_channels_last_activations_give_the_same_results(with_z, rank, dtype):
    # u (and z, and the gradient coming back) given channels-last, as the transpose of a contiguous
    # (batch, L, D) tensor (as mamba layers hold activations; PoseMamba's conv gives u so), are read as
    # they are, not copied: the results of contiguous inputs, bitwise (the gate's gradients run over the
    # same (L, 16) blocks either way; dz, and bfloat16's results, are held to a few ulps only, which the
    # vector clones' fused multiply-adds would allow). The batch of 4 and D = 40 take blocks narrower
    # than 16 channels and tasks of two blocks.
    inputs, names, grad_out, out, grads = contiguous_results(random_scan_inputs(4, 40, 67, 2, 4, dtype, with_z=with_z),
                                                             rank)
    laid_out = {**inputs, **{name: channels_last(inputs[name].detach()).requires_grad_(True)
                             for name in ("u", "z") if inputs[name] is not None}}
    laid_out_out, laid_out_grads = gradients(multi_path_selective_scan, laid_out, names, channels_last(grad_out))
    inexact = ["out"] + names if dtype == torch.bfloat16 else ["z"]
    assert_layouts_agree(["out"] + names, [laid_out_out, *laid_out_grads], [out, *grads], inexact)
    # du and dz come back in their inputs' layout, for the backward of whatever made them.
    for name in ("u", "z"):
        if name in names:
            assert laid_out_grads[names.index(name)].transpose(1, 2).is_contiguous(), name
            assert grads[names.index(name)].is_contiguous(), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rank", [0, 3], ids=["full", "low_rank"])
def test_projection_rows_give_the_same_results(rank, dtype):
    # delta, B and C given as views of one (batch, L, P, R + 2N) tensor (PoseMamba's model passes them
    # so): the op lays them out in one copy each, and the results are those of contiguous inputs,
    # bitwise (the half types' B and C are converted to float in that same copy).
    inputs, names, grad_out, out, grads = contiguous_results(random_scan_inputs(2, 20, 67, 3, 5, dtype), rank)
    views = as_projection_rows([inputs["delta"], inputs["B"], inputs["C"]])
    assert not any(view.is_contiguous() or view.transpose(-1, -2).is_contiguous() for view in views)
    laid_out = {**inputs, **{name: view.requires_grad_(True) for name, view in zip(("delta", "B", "C"), views)}}
    laid_out_out, laid_out_grads = gradients(multi_path_selective_scan, laid_out, names, grad_out)
    assert_layouts_agree(["out"] + names, [laid_out_out, *laid_out_grads], [out, *grads], inexact=())


def assert_layouts_agree(names, results, expected, inexact=("z",)):
    """Bitwise equal, or within a few ulps for the names in inexact."""
    for name, a, b in zip(names, results, expected, strict=True):
        if name in inexact:
            eps = torch.finfo(b.dtype).eps
            torch.testing.assert_close(a, b, rtol=8 * eps, atol=8 * eps * b.abs().max().item(), msg=name)
        else:
            assert torch.equal(a, b), name


def test_channels_last_u_with_other_layouts_around_it():
    # z and grad_out contiguous while u is channels-last: each is read in its own layout.
    inputs = random_scan_inputs(2, 20, 50, 2, 4, torch.float32)
    names = differentiable_inputs(inputs)
    grad_out = torch.randn_like(inputs["u"])
    out, grads = gradients(multi_path_selective_scan, inputs, names, grad_out)
    mixed = {**inputs, "u": channels_last(inputs["u"].detach()).requires_grad_(True)}
    mixed_out, mixed_grads = gradients(multi_path_selective_scan, mixed, names, grad_out)
    assert_layouts_agree(["out"] + names, [mixed_out, *mixed_grads], [out, *grads])
    assert mixed_grads[names.index("u")].transpose(1, 2).is_contiguous() and mixed_grads[names.index("z")].is_contiguous()


@pytest.mark.parametrize("with_z", [False, True])
def test_channels_last_opcheck(with_z):
    inputs = random_scan_inputs(2, 18, 70, 2, 4, torch.float32, with_z=with_z)
    inputs["u"] = channels_last(inputs["u"])
    if with_z:
        inputs["z"] = channels_last(inputs["z"])
    differentiable_inputs(inputs)
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["paths"],
            inputs["D"], inputs["z"], inputs["delta_bias"], inputs["mix"], True)
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_fwd.default, args)
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args[:-1]]
    out, out_ungated, chunk_states = torch.ops.posemamba.multi_path_scan_fwd(*detached, True)
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_bwd.default,
                          (channels_last(torch.randn_like(out)), *detached, out_ungated, chunk_states, True))
    # du and dz asked channels-last, as the op's autograd asks for them here (the fake kernel agrees).
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_bwd.default,
                          (channels_last(torch.randn_like(out)), *detached, out_ungated, chunk_states, True, [], None,
                           True, with_z))


@pytest.mark.parametrize("with_z", [False, True])
def test_channels_last_out(with_z):
    # out written as the transpose of a contiguous (batch, L, D) tensor: the same values (bitwise), the
    # same gradients (its own gradient coming back channels-last, as out.transpose(1, 2)'s does).
    inputs = random_scan_inputs(2, 40, 67, 2, 4, torch.float32, with_z=with_z)
    names = differentiable_inputs(inputs)
    grad_out = torch.randn_like(inputs["u"])
    out, grads = gradients(multi_path_selective_scan, inputs, names, grad_out)
    out_last = multi_path_selective_scan(**inputs, channels_last_out=True)
    assert out_last.transpose(1, 2).is_contiguous() and not out_last.is_contiguous()
    grads_last = torch.autograd.grad(out_last, [inputs[name] for name in names], channels_last(grad_out))
    assert_layouts_agree(["out"] + names, [out_last, *grads_last], [out, *grads])
    # The reference lays its out the same way.
    reference = multi_path_selective_scan_ref(**inputs, channels_last_out=True)
    assert reference.transpose(1, 2).is_contiguous()
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_fwd.default,
                          tuple(inputs[name] for name in ("u", "delta", "A", "B", "C", "paths", "D", "z",
                                                          "delta_bias", "mix")) + (True, [], True, None, True))

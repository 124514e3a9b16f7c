"""One command to verify and measure the CUDA kernels on a GPU machine (no network needed).

    python benchmarks/gpu_report.py --out DIR   # build, test, time, profile; logs and reports into DIR
    python benchmarks/gpu_report.py --no-build  # the extension is already built

On the lent device machine, whose commands get 10 minutes each, one call measures what matters (about 4
to 5 minutes on an H200, the build included; the reference's minutes left out, its times do not change):
    PYTHONUNBUFFERED=1 python benchmarks/gpu_report.py --out $OUT --no-reference --ncu-shapes L16

In the order of what matters most, so that a run cut short still says the most: it (1) builds the
extension for the visible GPU's architecture with FORCE_CUDA=1, (2) runs tests/test_cuda.py, (3) times
the fused kernels, the unfused pipeline (copies + one single-path scan per direction + merge, on our own
kernels) and the reference at PoseMamba-S/-L block shapes, batch 1, 4 and 16, forward and
forward+backward, with CUDA events (median of 20), then low-rank step sizes projected by the kernels
against a matmul's full ones and the inputs in the layouts the kernels read as they are, and prints that table (written to DIR/timings.txt too), (4) times the fused op at the small batches and batch 16 under each work split (the chunked splits
for several POSEMAMBA_CUDA_SPAN_BLOCKS_PER_SM settings, the forward's warp split alone, the warp
splits of both for the joint-major paths, and at batch 16 for every path), and at batch 16 with every
path frame-major too (DIR/span_sweep.txt), (5) prints each kernel's time in one fused
forward+backward at batch 16 (the profiler), (6) profiles the scan's kernels with Nsight Compute where `ncu` can read the counters
(full report in DIR/ncu_*.txt, a summary line per kernel here), (7) runs a few CUDA tests under
compute-sanitizer's memcheck and racecheck, (8) runs the model's CUDA benchmarks (the fused model and
the official data flow) and prints each kernel's share of a PoseMamba-L training step, and prints the
sweep and the table again last. Every step after the build runs with a time limit; one that fails or runs
out is reported and the next runs.
"""
import argparse
import csv
import functools
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, J, N, P = 243, 17, 16, 4
SHAPES = {"S": 128, "L": 256}  # d_inner of PoseMamba-S and -L blocks
BATCHES = (1, 4, 16)


def run_step(name, command, timeout_s):
    """Runs one step's command with a time limit. Returns its exit status, or None when it ran out of
    time or could not start."""
    print(f"\n== gpu_report: {name}", flush=True)
    try:
        return subprocess.run(command, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        print(f"gpu_report: {name} ran past {timeout_s} s and was stopped", flush=True)
    except OSError as error:
        print(f"gpu_report: {name} could not start: {error}", flush=True)
    return None


def build():
    """Builds the extension in place for the visible GPU's architecture, and puts the checkout on the
    PYTHONPATH of the steps' processes. In place rather than `pip install -e`: older setuptools turn
    an editable install into an isolated PEP 517 build, which needs a network the device machines lack."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    env = dict(os.environ, FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=f"{major}.{minor}")
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], check=True, env=env, cwd=ROOT)


def run_cuda_tests():
    """Returns True when every CUDA test passed."""
    return run_step("CUDA tests", [sys.executable, "-m", "pytest", "-q", os.path.join(ROOT, "tests", "test_cuda.py")],
                    timeout_s=300) == 0


def run_sanitizers():
    """compute-sanitizer's memcheck and racecheck over small CUDA tests that take both work splits (whole
    paths, and paths cut into spans): out-of-bounds accesses and shared-memory races, which the host
    emulation cannot show. Returns False if either found an error (exit status 1: the error exit code
    asked for, or a test that failed under it); a tool that cannot run on this machine (gVisor machines
    have no sanitizer support) is reported and not counted."""
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        print("gpu_report: compute-sanitizer is not on the PATH; memcheck and racecheck are skipped")
        return True
    tests = [sys.executable, "-m", "pytest", "-q", "-x", os.path.join(ROOT, "tests", "test_cuda.py"),
             "-k", "options or whole_path or empty or (warp_span and float32)"]
    clean = True
    for check in ("memcheck", "racecheck"):
        status = run_step(f"compute-sanitizer {check}", [tool, "--tool", check, "--error-exitcode", "1", *tests],
                          timeout_s=240)
        if status not in (0, None, 1):
            print(f"gpu_report: compute-sanitizer {check} exited with {status}: it did not run here")
        clean &= status != 1
    return clean


def run_model_benchmarks():
    """The model's CUDA forward and training-step benchmarks (PoseMamba-S and -L, T=243, batch 16)."""
    try:
        import pytest_benchmark  # noqa: F401
    except ImportError:
        print("gpu_report: pytest-benchmark is not installed; the model benchmarks are skipped")
        return
    run_step("model benchmarks on CUDA", [sys.executable, "-m", "pytest", "-q", "--benchmark-only", "-k", "cuda",
                                         "--benchmark-columns=median,min,max",
                                         os.path.join(ROOT, "benchmarks", "test_model_benchmarks.py")], timeout_s=240)


def model_breakdown(device="cuda", preset="L", batch=16, frames=243):
    """Each kernel's (on a CPU, each operator's) share of one PoseMamba training step, PoseMamba-L at
    T=243 and batch 16 by default: where the model's time goes around the scan."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from posemamba.model import posemamba

    on_gpu = device == "cuda"
    model = posemamba(preset, num_frame=frames).to(device)
    keypoints = torch.randn(batch, frames, 17, 2, device=device)

    def step():
        model.zero_grad(set_to_none=True)
        model(keypoints).square().mean().backward()
        if on_gpu:
            torch.cuda.synchronize()

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as prof:
        step()
    print(f"\nPoseMamba-{preset} training step, T={frames}, batch {batch}, by {'kernel' if on_gpu else 'operator'}:")
    print(prof.key_averages().table(sort_by="self_device_time_total" if on_gpu else "self_cpu_time_total",
                                    row_limit=15))


def pose_block_inputs(batch, dim, joint_major=True):
    """A PoseMamba block's fused-scan inputs on the GPU (the T x J grid's four paths, the global-local
    mix), the differentiable ones as leaves, and an upstream gradient. Without joint_major, the two
    joint-major paths are replaced by frame-major ones (the same work, every path along consecutive
    positions): what the joint-major paths' scattered accesses cost."""
    import torch

    from posemamba.ops import pose_mix, pose_paths
    from posemamba.testing import random_scan_inputs

    inputs = random_scan_inputs(batch, dim, T * J, P, N, torch.float32, device="cuda")
    paths = pose_paths(T, J)
    if not joint_major:
        paths[1::2] = paths[0::2]
    inputs["paths"], inputs["mix"] = paths.cuda(), pose_mix(T, J, torch.arange(J)).cuda()
    leaves = [inputs[k].requires_grad_(True) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    return inputs, leaves, torch.randn(batch, dim, T * J, device="cuda")


def scan_steps(fn, inputs, leaves, grad_out):
    """A scan implementation's forward (without autograd) and forward+backward on one set of inputs
    (fn's keyword arguments)."""
    import torch

    def forward():
        with torch.no_grad():
            fn(**inputs)

    def forward_backward():
        torch.autograd.grad(fn(**inputs), leaves, grad_out)

    return forward, forward_backward


def median_ms(fn, repeats=20):
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def floor_bytes(batch, dim, backward):
    """fp32 bytes read and written once: u, z, delta, B, C read and out written (forward); plus, with the
    backward, a call of its own: the same inputs read again, grad_out and the saved ungated output
    read, du, dz, ddelta, dB and dC written."""
    L = T * J
    forward = 4 * (3 * batch * dim * L + batch * P * dim * L + 2 * batch * P * N * L)
    if not backward:
        return forward
    return forward + 4 * (6 * batch * dim * L + 2 * batch * P * dim * L + 4 * batch * P * N * L)


def design_bytes(batch, dim, backward):
    """fp32 bytes these kernels move at the least, as designed: floor_bytes, plus what they write for a
    later kernel to read once. The forward (timed without autograd, as inference): each path's output in
    path order (batch, P, D, L), written by the scan and read by the merge (one writer per value and a
    fixed order of the paths' sum, so no atomics and a bitwise-repeatable result). With the backward,
    the forward also writes the ungated output and the state before every 64th step (batch, P, chunks,
    N, D), which the backward reads; and the backward writes dv per path in path order, read by their
    merge (the fixed-order sum over paths), and dB and dC per block of 32 channels (the fixed-order sum
    over channels), read by their sum; ddelta it writes once, in place."""
    L, chunks, channel_blocks = T * J, -(-T * J // 64), -(-dim // 32)
    per_path = batch * P * dim * L
    forward = floor_bytes(batch, dim, False) + 4 * 2 * per_path
    if not backward:
        return forward
    states = batch * P * chunks * N * dim
    channel_partials = batch * channel_blocks * P * L * N
    # (The floor's backward reads the ungated output already.)
    return forward + floor_bytes(batch, dim, True) - floor_bytes(batch, dim, False) + 4 * (
        batch * dim * L + 2 * states + 2 * per_path + 2 * 2 * channel_partials)


def write_timing_table(table_path, with_reference=True):
    """Times every implementation at every shape, printing and writing each row as soon as it is
    measured (so a step stopped at its time limit leaves the rows it has). The reference (its
    forward+backward seconds at each batch-1 and -4 shape) can be left out of a quick re-measurement."""
    import torch

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from baselines import unfused_multi_path_scan
    from posemamba.ops import multi_path_selective_scan
    from posemamba.reference import multi_path_selective_scan_ref

    implementations = {"fused": multi_path_selective_scan, "unfused": unfused_multi_path_scan}
    if with_reference:
        implementations["reference"] = multi_path_selective_scan_ref
    with open(table_path, "w") as table:
        def emit(line):
            print(line, flush=True)
            table.write(line + "\n")
            table.flush()

        emit(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, float32, T={T} J={J} N={N} P={P}")
        emit(f"{'shape':8} {'pass':8} {'fused ms':>9} {'unfused ms':>11} {'x':>5} {'reference ms':>13} {'x':>6} "
             f"{'GB/s':>7} {'design GB/s':>11}")
        for name, dim in SHAPES.items():
            for batch in BATCHES:
                inputs, leaves, grad_out = pose_block_inputs(batch, dim)
                for backward in (False, True):
                    times = {}
                    for impl, fn in implementations.items():
                        if impl == "reference" and batch > 4:
                            continue

                        step = scan_steps(fn, inputs, leaves, grad_out)[1 if backward else 0]
                        times[impl] = median_ms(step, repeats=5 if impl == "reference" else 20)
                    fused, unfused, reference = times["fused"], times["unfused"], times.get("reference")
                    gbps = floor_bytes(batch, dim, backward) / (fused * 1e-3) / 1e9
                    design_gbps = design_bytes(batch, dim, backward) / (fused * 1e-3) / 1e9
                    ref_cells = f"{reference:13.2f} {reference / fused:6.1f}" if reference else f"{'-':>13} {'-':>6}"
                    emit(f"{f'{name} b{batch}':8} {'fwd+bwd' if backward else 'fwd':8} {fused:9.3f} {unfused:11.3f} "
                         f"{unfused / fused:5.2f} {ref_cells} {gbps:7.0f} {design_gbps:11.0f}")
        emit("GB/s: the floor's bytes (read and written once) over the fused time; design GB/s: the bytes these "
             "kernels move at the least (the floor's, their per-path workspaces and saved states) over the same; "
             "H200 HBM3e copies at about 4300 (measured there), H100 HBM3 at about 3000. Batch 1 fits the "
             "50-60 MB L2: timed in cache.")
        write_low_rank_rows(emit)
        write_layout_rows(emit)


# PoseMamba's ranks of the step sizes' projection (mamba's dt_rank, d_model / 16), by block shape.
LOW_RANK = {"S": 4, "L": 8}


def write_low_rank_rows(emit):
    """Low-rank step sizes as PoseMamba's blocks pass them (delta_proj_weight): the kernels projecting them
    as they read them ("fused"), against the full step sizes made by a matmul and passed in ("matmul",
    what the op did on CUDA before its kernels projected), at batch 1 and 16."""
    import torch

    from posemamba.ops import multi_path_selective_scan

    def projected(delta_proj_weight, delta, **inputs):
        return multi_path_selective_scan(delta=torch.matmul(delta_proj_weight, delta), **inputs)

    emit(f"{'low rank':8} {'pass':8} {'fused ms':>9} {'matmul ms':>11} {'x':>5}")
    for name, dim in SHAPES.items():
        rank = LOW_RANK[name]
        for batch in (1, 16):
            inputs, leaves, grad_out = pose_block_inputs(batch, dim)
            length, device = inputs["u"].shape[-1], inputs["u"].device
            inputs["delta"] = torch.randn(batch, P, rank, length, device=device, requires_grad=True)
            inputs["delta_proj_weight"] = (torch.randn(P, dim, rank, device=device) * rank ** -0.5).requires_grad_()
            leaves[1:2] = [inputs["delta"], inputs["delta_proj_weight"]]
            for backward in (False, True):
                fused, matmul = (median_ms(scan_steps(fn, inputs, leaves, grad_out)[1 if backward else 0])
                                 for fn in (multi_path_selective_scan, projected))
                emit(f"{f'{name} b{batch} R{rank}':8} {'fwd+bwd' if backward else 'fwd':8} {fused:9.3f} {matmul:11.3f} "
                     f"{matmul / fused:5.2f}")


def write_layout_rows(emit):
    """Inputs in the layouts callers give them, which the kernels read as they are: B and C (batch, P, N,
    L) contiguous ("entries": a state entry's positions one run of memory), (batch, P, L, N) in memory
    ("positions": a position's entries one run, the joint-major paths' steps whole sectors apart), and
    with delta as views of one (batch, L, P, D + 2N) tensor, as PoseMamba's projection rows give them
    ("rows", which the CUDA op copied to "entries" before); then also u channels-last ("rows, u last":
    u as its convolution leaves it, read a step's 32 channels at a time where (batch, D, L) goes through
    the step tiles, and was copied so before); last, z and the gradient channels-last too, and out asked
    so ("rows, all last", which the CUDA op copied before; the model's layouts, though its blocks gate
    after their norm, not in the op), at batch 1 and 16."""
    from posemamba.ops import multi_path_selective_scan
    from posemamba.testing import as_projection_rows, channels_last

    emit(f"{'layout':8} {'pass':8} {'entries ms':>10} {'positions ms':>12} {'rows ms':>8} {'rows, u last ms':>15} "
         f"{'rows, all last ms':>17}")
    for name, batch in ((name, batch) for name in SHAPES for batch in (1, 16)):
        inputs, _, grad_out = pose_block_inputs(batch, SHAPES[name])
        positions_major = {key: inputs[key].detach().transpose(-1, -2).contiguous().transpose(-1, -2)
                           for key in ("B", "C")}
        rows = dict(zip(("delta", "B", "C"), as_projection_rows([inputs[key] for key in ("delta", "B", "C")])))
        u_last = {"u": channels_last(inputs["u"])}
        all_last = {**rows, **u_last, "z": channels_last(inputs["z"])}
        for backward in (False, True):
            times = []
            for laid_out in ({}, positions_major, rows, {**rows, **u_last}, all_last):
                outputs_last = laid_out is all_last
                laid_out = {key: value.detach().requires_grad_(True) for key, value in laid_out.items()}
                layout_inputs = {**inputs, **laid_out, **({"channels_last_out": True} if outputs_last else {})}
                layout_leaves = [layout_inputs[leaf] for leaf in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
                step = scan_steps(multi_path_selective_scan, layout_inputs, layout_leaves,
                                  channels_last(grad_out) if outputs_last else grad_out)
                times.append(median_ms(step[1 if backward else 0]))
            emit(f"{f'{name} b{batch}':8} {'fwd+bwd' if backward else 'fwd':8} {times[0]:10.3f} {times[1]:12.3f} "
                 f"{times[2]:8.3f} {times[3]:15.3f} {times[4]:17.3f}")

# The work splits, each in a process of its own (the kernels read their settings once): the chunked
# splits with POSEMAMBA_CUDA_SPAN_BLOCKS_PER_SM at 2 (the default; 0, 1 and 4 measured no better on the
# whole, twice), and 16 and 64, which cut paths into spans at batch 16 too; then the warp splits
# (csrc/cuda/scan_warp_spans_cuda.cuh, scan_warp_spans_backward_cuda.cuh), which PoseMamba's
# joint-major paths select with their span length (T) by default, the frame-major ones keeping the
# chunked split: the forward's alone (the backward chunked, as "chunks 2"), then both, so that the
# fwd+bwd columns tell each split's share; last, at batch 16 only, the warp splits for every path
# (the op given the hint T for each, HINT_EVERY_PATH): what the per-path choice gains.
HINT_EVERY_PATH = "GPU_REPORT_HINT_EVERY_PATH"
SPLIT_SETTINGS = tuple((f"chunks {blocks}", {"POSEMAMBA_CUDA_WARP_SPANS": "0",
                                             "POSEMAMBA_CUDA_SPAN_BLOCKS_PER_SM": blocks})
                       for blocks in ("2", "16", "64")) + (
    ("warps fwd", {"POSEMAMBA_CUDA_WARP_SPANS": "forward"}),
    ("warps", {"POSEMAMBA_CUDA_WARP_SPANS": "1"}),
    ("warps all", {"POSEMAMBA_CUDA_WARP_SPANS": "1", HINT_EVERY_PATH: "1"}))
# (shape, batch, joint-major paths): where blocks of whole paths do not fill the GPU, and the training
# shape, whose joint-major paths lose their sectors from L2 before they use them all (spans walked
# together might share them), also with every path frame-major: what the joint-major accesses cost.
SPAN_SHAPES = (("S", 1, True), ("S", 4, True), ("L", 1, True), ("L", 4, True), ("L", 16, True), ("L", 16, False))


def write_span_sweep_rows(sweep_path, label):
    """The fused op's times at SPAN_SHAPES under this process's split setting (label names it), a row
    per shape, appended to sweep_path; with HINT_EVERY_PATH set, the op is given the span length T for
    every path, at batch 16 only."""
    from posemamba.ops import multi_path_selective_scan

    every_path = bool(os.environ.get(HINT_EVERY_PATH))
    scan = functools.partial(multi_path_selective_scan, span_lengths=T) if every_path else multi_path_selective_scan
    with open(sweep_path, "a") as sweep:
        for name, batch, joint_major in SPAN_SHAPES:
            if every_path and batch != 16:
                continue
            inputs = pose_block_inputs(batch, SHAPES[name], joint_major)
            forward, both = scan_steps(scan, *inputs)
            shape = f"{name} b{batch}" + ("" if joint_major else " frame-major")
            row = f"{label:>9} {shape:17} {median_ms(forward):9.3f} {median_ms(both):12.3f}"
            print(row, flush=True)
            sweep.write(row + "\n")


def span_sweep(out_dir):
    """The fused op at SPAN_SHAPES under each of SPLIT_SETTINGS: which span target fills the GPU best
    at small batches (the default is 2 blocks per multiprocessor, the best at batch 1 on an H200),
    whether spans help the training shape too, and the warp split against the chunked one."""
    sweep_path = os.path.join(out_dir, "span_sweep.txt")
    with open(sweep_path, "w") as sweep:
        sweep.write(f"{'split':>9} {'shape':17} {'fwd ms':>9} {'fwd+bwd ms':>12}\n")
    print(open(sweep_path).read(), end="", flush=True)
    for label, settings in SPLIT_SETTINGS:
        env = dict(os.environ, **settings)
        command = [sys.executable, os.path.abspath(__file__), "--out", out_dir, "--step", "sweep", "--label", label]
        try:
            subprocess.run(command, env=env, timeout=120)
        except subprocess.TimeoutExpired:
            print(f"gpu_report: the span sweep's '{label}' setting ran past 120 s")


def sweep_times(sweep_text):
    """{(label, shape): (forward ms, forward+backward ms)} from span_sweep.txt's rows."""
    labels = sorted((label for label, _ in SPLIT_SETTINGS), key=len, reverse=True)  # "warps fwd" before "warps"
    times = {}
    for row in sweep_text.splitlines()[1:]:
        *words, forward, both = row.split()
        text = " ".join(words)
        label = next((label for label in labels if text.startswith(label + " ")), None)
        if label is not None:
            times[(label, text[len(label):].strip())] = (float(forward), float(both))
    return times


def split_verdicts(sweep_text, shape="L b16"):
    """What the sweep says of the defaults at the training shape, a line each: whether the warp splits
    beat the chunked ones there (else set them off in warp_spans_allowed, csrc/cuda/scan_warp_split_cuda.cuh),
    what the per-path choice gains over the warp splits for every path, and whether spans help the
    chunked split there."""
    times = sweep_times(sweep_text)

    def compare(what, faster, slower, column):
        a, b = times.get((faster, shape)), times.get((slower, shape))
        if a is None or b is None:
            return f"{what}: not measured ('{faster}' or '{slower}' at {shape} missing)"
        columns = ("forward", "forward+backward")
        ratio = b[column] / a[column]
        verdict = "wins" if ratio > 1 else "loses"
        return (f"{what}: '{faster}' {a[column]:.3f} ms vs '{slower}' {b[column]:.3f} ms {columns[column]}: "
                f"{verdict} ({ratio:.2f}x)")

    return [compare("the forward's warp split (keep it on if it wins)", "warps fwd", "chunks 2", 0),
            compare("the backward's warp split (keep it on if it wins)", "warps", "warps fwd", 1),
            compare("the per-path choice, forward", "warps", "warps all", 0),
            compare("the per-path choice, forward+backward", "warps", "warps all", 1),
            compare("the chunked split cut into spans for 16 blocks a multiprocessor", "chunks 16", "chunks 2", 1),
            compare("the chunked split cut into spans for 64 blocks a multiprocessor", "chunks 64", "chunks 2", 1)]


def fused_forward_backward(batch, dim):
    """One fused forward+backward of a PoseMamba block's scan: the work the profilers look at."""
    from posemamba.ops import multi_path_selective_scan

    return scan_steps(multi_path_selective_scan, *pose_block_inputs(batch, dim))[1]


def kernel_breakdown():
    """Each kernel's share of one fused forward+backward at the batch-16 shapes, from the profiler: where
    the next optimisation goes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    for name, dim in SHAPES.items():
        step = fused_forward_backward(16, dim)
        step()  # warm-up
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        print(f"\n{name} b16, fused forward+backward, by kernel:")
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=12))


# Where the scan's kernels spend their time, per kernel, from Nsight Compute's sections (names as its
# details page gives them; a section this ncu lacks prints "-").
NCU_SUMMARY = {"Duration": "us", "Compute (SM) Throughput": "SM %", "Memory Throughput": "mem %",
               "DRAM Throughput": "DRAM %", "L1/TEX Cache Throughput": "L1 %", "Issue Slots Busy": "issue %",
               "Achieved Occupancy": "occup %", "Registers Per Thread": "regs"}
MICROSECONDS_PER = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
NCU_KERNELS = "regex:scan|merge|carry|partials|invert"
NCU_SHAPES = {"L16": ("L", 16), "S1": ("S", 1)}


def kernel_short_name(name):
    head = name.split("(")[0].split("<")[0]
    return head.split("::")[-1].split()[-1]


def print_ncu_summary(details_csv):
    rows = {}
    for record in csv.DictReader(io.StringIO(details_csv)):
        row = rows.setdefault(record["ID"], {"kernel": kernel_short_name(record["Kernel Name"])})
        name, unit, value = record["Metric Name"], record["Metric Unit"], record["Metric Value"]
        if name == "Duration" and unit in MICROSECONDS_PER:  # in microseconds, whatever unit ncu chose
            value = f"{float(value.replace(',', '')) * MICROSECONDS_PER[unit]:.1f}"
        row.setdefault(name, value)
    print(f"{'kernel':30}" + "".join(f"{label:>9}" for label in NCU_SUMMARY.values()))
    for row in rows.values():
        print(f"{row['kernel']:30}" + "".join(f"{row.get(name, '-'):>9}" for name in NCU_SUMMARY))


def profile_with_ncu(out_dir, shapes):
    """Nsight Compute's full set of sections for each of the scan's kernels in one fused forward+backward
    (PoseMamba-L at batch 16: whole paths per block; -S at batch 1: paths cut into spans): the report as
    text in out_dir/ncu_SHAPE.txt, every metric in out_dir/ncu_SHAPE_raw.csv, and a summary line per kernel.
    The clocks are left as they are."""
    tool = shutil.which("ncu")
    if tool is None:
        print("gpu_report: ncu is not on the PATH; the Nsight Compute profile is skipped")
        return
    for shape in shapes:
        report = os.path.join(out_dir, f"ncu_{shape}")
        status = run_step(f"Nsight Compute, {shape}",
                          [tool, "--clock-control", "none", "--set", "full", "--kernel-name", NCU_KERNELS,
                           "--export", report, "--force-overwrite", sys.executable, os.path.abspath(__file__),
                           "--step", "profile", "--shape", shape], timeout_s=240)
        if status != 0 or not os.path.exists(report + ".ncu-rep"):
            print(f"gpu_report: Nsight Compute did not profile {shape} here (exit status {status})")
            continue
        imported = [tool, "--import", report + ".ncu-rep", "--page", "details"]
        with open(report + ".txt", "w") as text:
            subprocess.run(imported, stdout=text, stderr=subprocess.STDOUT)
        print_ncu_summary(subprocess.run(imported + ["--csv"], capture_output=True, text=True).stdout)
        # Every collected metric (the stall reasons' shares among them, which the text leaves out).
        with open(report + "_raw.csv", "w") as raw:
            subprocess.run([tool, "--import", report + ".ncu-rep", "--page", "raw", "--csv"], stdout=raw,
                           stderr=subprocess.STDOUT)
        os.remove(report + ".ncu-rep")  # the text and the metrics say it all; the device returns few files


def run_internal_step(args):
    """The steps that use the GPU in a process of their own (so a crash or a hang there stops only
    that step)."""
    import torch

    if args.step == "table":
        write_timing_table(os.path.join(args.out, "timings.txt"), with_reference=not args.no_reference)
    elif args.step == "sweep":
        write_span_sweep_rows(os.path.join(args.out, "span_sweep.txt"), args.label)
    elif args.step == "breakdown":
        kernel_breakdown()
    elif args.step == "model_breakdown":
        model_breakdown()
    elif args.step == "profile":
        name, batch = NCU_SHAPES[args.shape]
        fused_forward_backward(batch, SHAPES[name])()
        torch.cuda.synchronize()


# The steps after the build, in the order they run (--only picks some).
STEPS = ("tests", "timings", "sweep", "breakdown", "ncu", "sanitizers", "model")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-build", action="store_true", help="use the extension as already built")
    parser.add_argument("--out", help="where the timing table and the Nsight Compute reports go (default: a new "
                                      "temporary folder)")
    parser.add_argument("--only", help="comma-separated steps to run, of " + ", ".join(STEPS) + " (default: all; "
                                       "a device command has 10 minutes, so a first run may split them in two)")
    parser.add_argument("--no-reference", action="store_true",
                        help="leave the pure-PyTorch reference out of the timing table (about a minute less)")
    parser.add_argument("--ncu-shapes", default=",".join(NCU_SHAPES),
                        help="comma-separated shapes Nsight Compute profiles, of " + ", ".join(NCU_SHAPES) +
                             " (default: all)")
    parser.add_argument("--step", choices=("table", "sweep", "breakdown", "model_breakdown", "profile"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=tuple(NCU_SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("--label", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = STEPS if args.only is None else tuple(step.strip() for step in args.only.split(","))
    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        parser.error(f"--only: no step named {', '.join(unknown)}; the steps are {', '.join(STEPS)}")
    ncu_shapes = tuple(shape.strip() for shape in args.ncu_shapes.split(","))
    unknown = [shape for shape in ncu_shapes if shape not in NCU_SHAPES]
    if unknown:
        parser.error(f"--ncu-shapes: no shape named {', '.join(unknown)}; the shapes are {', '.join(NCU_SHAPES)}")
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_report: no CUDA device is visible")
    if args.step:
        return run_internal_step(args)
    out_dir = args.out or tempfile.mkdtemp(prefix="gpu_report.")
    os.makedirs(out_dir, exist_ok=True)
    if not args.no_build:
        build()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    this_script = [sys.executable, os.path.abspath(__file__), "--out", out_dir]
    tests_passed = run_cuda_tests() if "tests" in steps else None
    if "timings" in steps:
        run_step("timings", this_script + ["--step", "table"] + (["--no-reference"] if args.no_reference else []),
                 timeout_s=300)
    if "sweep" in steps:
        print("\n== gpu_report: span sweep", flush=True)
        span_sweep(out_dir)
    if "breakdown" in steps:
        run_step("kernel breakdown", this_script + ["--step", "breakdown"], timeout_s=120)
    if "ncu" in steps:
        profile_with_ncu(out_dir, ncu_shapes)
    sanitizers_clean = run_sanitizers() if "sanitizers" in steps else None
    if "model" in steps:
        run_model_benchmarks()
        run_step("model kernel breakdown", this_script + ["--step", "model_breakdown"], timeout_s=120)
    verdicts = {None: "not run", True: "passed", False: "FAILED"}
    print(f"\nCUDA tests {verdicts[tests_passed]}; compute-sanitizer "
          f"{ {None: 'not run', True: 'found nothing', False: 'found ERRORS'}[sanitizers_clean] }; "
          f"logs and reports in {out_dir}")
    for path in (os.path.join(out_dir, "span_sweep.txt"), os.path.join(out_dir, "timings.txt")):
        if os.path.exists(path):
            print(open(path).read(), end="")
    if os.path.exists(os.path.join(out_dir, "span_sweep.txt")):
        print("\n".join(split_verdicts(open(os.path.join(out_dir, "span_sweep.txt")).read())))
    sys.exit(1 if tests_passed is False or sanitizers_clean is False else 0)


if __name__ == "__main__":
    main()

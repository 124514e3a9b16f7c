"""One command to verify and measure the CUDA kernels on a GPU machine (no network needed).

    python benchmarks/gpu_report.py            # build, run the CUDA tests, time, print the table
    python benchmarks/gpu_report.py --no-build # the extension is already built

It (1) builds the extension for the visible GPU's architecture with FORCE_CUDA=1, (2) runs
tests/test_cuda.py, and a few of them under compute-sanitizer's memcheck and racecheck, (3) runs the
model's CUDA benchmarks, (4) prints each kernel's time in one fused
forward+backward at batch 16 (the profiler), (5) times the fused kernels, the unfused pipeline (copies
+ one single-path scan per direction + merge, on our own kernels) and the reference at PoseMamba-S/-L
block shapes, batch 1, 4 and 16, forward and forward+backward, with CUDA events (median of 20), and (6)
prints a table last:
times, ratios, and the achieved bandwidth against the floor (the bytes the op must read and write once).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, J, N, P = 243, 17, 16, 4
SHAPES = {"S": 128, "L": 256}  # d_inner of PoseMamba-S and -L blocks
BATCHES = (1, 4, 16)


def build():
    import torch

    major, minor = torch.cuda.get_device_capability()
    env = dict(os.environ, FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=f"{major}.{minor}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", ROOT],
                   check=True, env=env)


def run_cuda_tests():
    return subprocess.run([sys.executable, "-m", "pytest", "-q", os.path.join(ROOT, "tests", "test_cuda.py")]).returncode


def run_sanitizers():
    """compute-sanitizer's memcheck and racecheck over small CUDA tests that take both work splits (whole
    paths, and paths cut into spans): out-of-bounds accesses and shared-memory races, which the host
    emulation cannot show. Returns non-zero if either finds an error."""
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        print("gpu_report: compute-sanitizer is not on the PATH; memcheck and racecheck are skipped")
        return 0
    tests = [sys.executable, "-m", "pytest", "-q", "-x", os.path.join(ROOT, "tests", "test_cuda.py"),
             "-k", "options or whole_path or empty"]
    failed = 0
    for check in ("memcheck", "racecheck"):
        failed |= subprocess.run([tool, "--tool", check, "--error-exitcode", "1", *tests]).returncode
    return failed


def run_model_benchmarks():
    """The model's CUDA forward and training-step benchmarks (PoseMamba-S and -L, T=243, batch 16)."""
    try:
        import pytest_benchmark  # noqa: F401
    except ImportError:
        print("gpu_report: pytest-benchmark is not installed; the model benchmarks are skipped")
        return
    subprocess.run([sys.executable, "-m", "pytest", "-q", "--benchmark-only", "-k", "cuda",
                    "--benchmark-columns=median,min,max", os.path.join(ROOT, "benchmarks", "test_model_benchmarks.py")])


def pose_block_inputs(batch, dim):
    """A PoseMamba block's fused-scan inputs on the GPU (the T x J grid's four paths, the global-local
    mix), the differentiable ones as leaves, and an upstream gradient."""
    import torch

    from posemamba.ops import pose_mix, pose_paths
    from posemamba.testing import random_scan_inputs

    inputs = random_scan_inputs(batch, dim, T * J, P, N, torch.float32, device="cuda")
    inputs["paths"], inputs["mix"] = pose_paths(T, J).cuda(), pose_mix(T, J, torch.arange(J)).cuda()
    leaves = [inputs[k].requires_grad_(True) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    return inputs, leaves, torch.randn(batch, dim, T * J, device="cuda")


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
    """fp32 bytes read and written once: u, z, out, delta, B, C (forward); plus grad_out, the saved
    ungated output, du, dz, ddelta, dB, dC (backward)."""
    L = T * J
    forward = 4 * (3 * batch * dim * L + batch * P * dim * L + 2 * batch * P * N * L)
    if not backward:
        return forward
    return forward + 4 * (5 * batch * dim * L + 2 * batch * P * dim * L + 4 * batch * P * N * L)


def measure():
    import torch

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from baselines import unfused_multi_path_scan
    from posemamba.ops import multi_path_selective_scan
    from posemamba.reference import multi_path_selective_scan_ref

    implementations = {"fused": multi_path_selective_scan, "unfused": unfused_multi_path_scan,
                       "reference": multi_path_selective_scan_ref}
    rows = []
    for name, dim in SHAPES.items():
        for batch in BATCHES:
            inputs, leaves, grad_out = pose_block_inputs(batch, dim)
            for backward in (False, True):
                times = {}
                for impl, fn in implementations.items():
                    if impl == "reference" and batch > 4:
                        continue

                    def step(fn=fn):
                        if backward:
                            torch.autograd.grad(fn(**inputs), leaves, grad_out)
                        else:
                            with torch.no_grad():
                                fn(**inputs)

                    times[impl] = median_ms(step, repeats=5 if impl == "reference" else 20)
                gbps = floor_bytes(batch, dim, backward) / (times["fused"] * 1e-3) / 1e9
                rows.append((f"{name} b{batch}", "fwd+bwd" if backward else "fwd", times, gbps))
    return rows


def kernel_breakdown():
    """Each kernel's share of one fused forward+backward at the batch-16 shapes, from the profiler: where
    the next optimisation goes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from posemamba.ops import multi_path_selective_scan

    for name, dim in SHAPES.items():
        inputs, leaves, grad_out = pose_block_inputs(16, dim)
        torch.autograd.grad(multi_path_selective_scan(**inputs), leaves, grad_out)  # warm-up
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            torch.autograd.grad(multi_path_selective_scan(**inputs), leaves, grad_out)
            torch.cuda.synchronize()
        print(f"\n{name} b16, fused forward+backward, by kernel:")
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=12))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-build", action="store_true", help="use the extension as already built")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_report: no CUDA device is visible")
    if not args.no_build:
        build()
    tests_failed = run_cuda_tests()
    tests_failed |= run_sanitizers()
    run_model_benchmarks()
    kernel_breakdown()
    rows = measure()
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, float32, T={T} J={J} N={N} P={P}")
    print(f"{'shape':8} {'pass':8} {'fused ms':>9} {'unfused ms':>11} {'x':>5} {'reference ms':>13} {'x':>6} {'GB/s':>7}")
    for shape, kind, times, gbps in rows:
        fused, unfused, reference = times["fused"], times["unfused"], times.get("reference")
        ref_cells = f"{reference:13.2f} {reference / fused:6.1f}" if reference else f"{'-':>13} {'-':>6}"
        print(f"{shape:8} {kind:8} {fused:9.3f} {unfused:11.3f} {unfused / fused:5.2f} {ref_cells} {gbps:7.0f}")
    print("GB/s: the floor's bytes (read and written once) over the fused time; H100 HBM3 is about 3000.")
    sys.exit(1 if tests_failed else 0)


if __name__ == "__main__":
    main()

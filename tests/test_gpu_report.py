"""benchmarks/gpu_report.py's parts that run without a GPU: a GPU session has minutes, not hours, to
find a slip in the script, so its parsing, step selection and table formatting are checked here."""
import os
import subprocess
import sys

import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.append(BENCHMARKS)  # after the tests' own folder: benchmarks/ has a conftest.py too

import gpu_report  # noqa: E402

NCU_CSV_HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
                  '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"\n')


def ncu_row(kernel_id, kernel, metric, unit, value):
    return (f'"{kernel_id}","1","python","host","{kernel}","1","7","(32, 8, 1)","(8, 4, 16)","0","9.0",'
            f'"GPU Speed Of Light Throughput","{metric}","{unit}","{value}"\n')


def test_ncu_summary_has_a_line_per_kernel_in_microseconds(capsys):
    scan = "void posemamba::cuda::scan_span_kernel<float>(posemamba::MultiPathScanParams, long, const float *)"
    merge = "void posemamba::cuda::merge_paths_kernel<c10::Half>(posemamba::MultiPathScanParams, const float *)"
    details = (NCU_CSV_HEADER + ncu_row(0, scan, "Duration", "msecond", "1.25")
               + ncu_row(0, scan, "Compute (SM) Throughput", "%", "71.2")
               + ncu_row(1, merge, "Duration", "nsecond", "85,100"))
    gpu_report.print_ncu_summary(details)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["kernel", "us", "SM"]
    assert lines[1].split()[:3] == ["scan_span_kernel", "1250.0", "71.2"]
    assert lines[2].split()[:3] == ["merge_paths_kernel", "85.1", "-"]


def test_only_names_an_unknown_step():
    result = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "gpu_report.py"), "--only", "tests,speed"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "--only: no step named speed; the steps are tests, timings, sweep" in result.stderr


def test_ncu_shapes_names_an_unknown_shape():
    result = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "gpu_report.py"), "--ncu-shapes", "L16,XL"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "--ncu-shapes: no shape named XL; the shapes are L16, S1" in result.stderr


def test_timing_table_rows(monkeypatch, tmp_path):
    # The table's code on CPU tensors at a short length, with wall-clock times in place of CUDA events.
    from posemamba.ops import pose_mix, pose_paths
    from posemamba.testing import random_scan_inputs

    T, J = 3, gpu_report.J

    def cpu_inputs(batch, dim):
        inputs = random_scan_inputs(batch, dim, T * J, gpu_report.P, gpu_report.N, torch.float32)
        inputs["paths"], inputs["mix"] = pose_paths(T, J), pose_mix(T, J, torch.arange(J))
        leaves = [inputs[k].requires_grad_(True) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
        return inputs, leaves, torch.randn(batch, dim, T * J)

    monkeypatch.setattr(gpu_report, "pose_block_inputs", cpu_inputs)
    monkeypatch.setattr(gpu_report, "median_ms", lambda fn, repeats=20: (fn(), 2.0)[1])
    monkeypatch.setattr(gpu_report, "SHAPES", {"S": 8})
    monkeypatch.setattr(gpu_report, "BATCHES", (1, 16))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "no GPU")
    gpu_report.write_timing_table(tmp_path / "timings.txt")
    rows = (tmp_path / "timings.txt").read_text().splitlines()
    assert [row.split()[:3] for row in rows[2:6]] == [["S", "b1", "fwd"], ["S", "b1", "fwd+bwd"],
                                                      ["S", "b16", "fwd"], ["S", "b16", "fwd+bwd"]]
    assert rows[2].split()[3:8] == ["2.000", "2.000", "1.00", "2.00", "1.0"]
    assert rows[4].split()[6:8] == ["-", "-"]  # no reference above batch 4
    assert [int(v) for v in rows[2].split()[8:10]] == [round(gpu_report.floor_bytes(1, 8, False) / 2e-3 / 1e9),
                                                      round(gpu_report.design_bytes(1, 8, False) / 2e-3 / 1e9)]
    # Then the low-rank step sizes, the kernels' projection against a matmul's, at batch 1 and 16.
    assert rows[7].split()[:2] == ["low", "rank"]
    assert [row.split() for row in rows[8:12]] == [
        ["S", f"b{batch}", "R4", step, "2.000", "2.000", "1.00"] for batch in (1, 16) for step in ("fwd", "fwd+bwd")]
    # Then the inputs in each layout the kernels read as it is.
    assert rows[12].split()[:2] == ["layout", "pass"]
    assert [row.split() for row in rows[13:17]] == [
        ["S", f"b{batch}", step, *["2.000"] * 5] for batch in (1, 16) for step in ("fwd", "fwd+bwd")]
    gpu_report.write_timing_table(tmp_path / "quick.txt", with_reference=False)
    assert (tmp_path / "quick.txt").read_text().splitlines()[2].split()[3:8] == ["2.000", "2.000", "1.00", "-", "-"]


def test_design_bytes_count_each_tensor_the_kernels_move():
    # PoseMamba-L at batch 16, tensor by tensor, as the kernels allocate and pass them (float32).
    batch, dim, L, chunks, channel_blocks = 16, 256, 243 * 17, 65, 8
    P, N = gpu_report.P, gpu_report.N
    natural, per_path, projection = batch * dim * L, batch * P * dim * L, batch * P * N * L
    saved_states, channel_partials = batch * P * chunks * N * dim, batch * channel_blocks * P * L * N
    inference = {"u, z": 2 * natural, "out": natural, "delta": per_path, "B, C": 2 * projection,
                 "y_paths written and read": 2 * per_path}
    training = {"out_ungated, chunk_states written": natural + saved_states,
                "grad_out, out_ungated, u, z read; du, dz written": 6 * natural,
                "delta read, ddelta written": 2 * per_path, "B, C read; dB, dC written": 4 * projection,
                "chunk_states read": saved_states, "dv_paths written and read": 2 * per_path,
                "dB, dC partials written and read": 4 * channel_partials}
    assert gpu_report.design_bytes(batch, dim, backward=False) == 4 * sum(inference.values())
    assert gpu_report.design_bytes(batch, dim, backward=True) == 4 * (sum(inference.values()) + sum(training.values()))
    # The forward's 1.05 GB are 2.07 times the floor's: at an H100's 3350 GB/s, 0.31 ms at the least.
    ratio = gpu_report.design_bytes(batch, dim, False) / gpu_report.floor_bytes(batch, dim, False)
    assert ratio == pytest.approx(2.07, abs=0.01)


def test_span_sweep_rows(monkeypatch, tmp_path):
    # The sweep's rows on CPU tensors: one per shape, the frame-major variant's paths along positions.
    from posemamba.ops import pose_mix, pose_paths
    from posemamba.testing import random_scan_inputs

    T, J = 2, gpu_report.J
    seen_paths = []

    def cpu_inputs(batch, dim, joint_major=True):
        inputs = random_scan_inputs(batch, dim, T * J, gpu_report.P, gpu_report.N, torch.float32)
        paths = pose_paths(T, J)
        if not joint_major:
            paths[1::2] = paths[0::2]
        seen_paths.append(paths)
        inputs["paths"], inputs["mix"] = paths, pose_mix(T, J, torch.arange(J))
        return inputs, [inputs["u"].requires_grad_(True)], torch.randn(batch, dim, T * J)

    monkeypatch.setattr(gpu_report, "pose_block_inputs", cpu_inputs)
    monkeypatch.setattr(gpu_report, "median_ms", lambda fn, repeats=20: (fn(), 2.0)[1])
    monkeypatch.setattr(gpu_report, "SHAPES", {"S": 8, "L": 8})
    gpu_report.write_span_sweep_rows(tmp_path / "sweep.txt", "warps")
    rows = [row.split() for row in (tmp_path / "sweep.txt").read_text().splitlines()]
    assert rows[-2] == ["warps", "L", "b16", "2.000", "2.000"]
    assert rows[-1] == ["warps", "L", "b16", "frame-major", "2.000", "2.000"]
    assert len(rows) == len(gpu_report.SPAN_SHAPES)
    frame_major = seen_paths[-1]
    assert torch.equal(frame_major[1], torch.arange(T * J)) and torch.equal(frame_major[3], torch.arange(T * J).flip(0))
    # The warp splits for every path: the op given a hint for each, at batch 16 only.
    import posemamba.ops

    hints = []
    scan = posemamba.ops.multi_path_selective_scan
    monkeypatch.setattr(posemamba.ops, "multi_path_selective_scan",
                        lambda **kwargs: (hints.append(kwargs.get("span_lengths")), scan(**kwargs))[1])
    monkeypatch.setenv(gpu_report.HINT_EVERY_PATH, "1")
    gpu_report.write_span_sweep_rows(tmp_path / "every_path.txt", "warps all")
    rows = [row.split() for row in (tmp_path / "every_path.txt").read_text().splitlines()]
    assert rows == [["warps", "all", "L", "b16", "2.000", "2.000"],
                    ["warps", "all", "L", "b16", "frame-major", "2.000", "2.000"]]
    assert hints and set(hints) == {gpu_report.T}


def test_split_verdicts_read_the_sweep():
    header = f"{'split':>9} {'shape':17} {'fwd ms':>9} {'fwd+bwd ms':>12}"
    rows = [("chunks 2", "L b16", 2.0, 6.0), ("chunks 16", "L b16", 2.2, 6.6), ("warps fwd", "L b16", 1.0, 5.0),
            ("warps", "L b16", 1.0, 4.0), ("warps all", "L b16", 1.5, 5.0), ("warps", "L b16 frame-major", 9.0, 9.0)]
    sweep = "\n".join([header] + [f"{label:>9} {shape:17} {fwd:9.3f} {both:12.3f}" for label, shape, fwd, both in rows])
    assert gpu_report.sweep_times(sweep)[("warps", "L b16 frame-major")] == (9.0, 9.0)
    assert gpu_report.sweep_times(sweep)[("warps fwd", "L b16")] == (1.0, 5.0)
    verdicts = gpu_report.split_verdicts(sweep)
    assert verdicts[0].endswith("'warps fwd' 1.000 ms vs 'chunks 2' 2.000 ms forward: wins (2.00x)")
    assert verdicts[1].endswith("'warps' 4.000 ms vs 'warps fwd' 5.000 ms forward+backward: wins (1.25x)")
    assert verdicts[2].endswith("'warps' 1.000 ms vs 'warps all' 1.500 ms forward: wins (1.50x)")
    assert verdicts[4].endswith("'chunks 16' 6.600 ms vs 'chunks 2' 6.000 ms forward+backward: loses (0.91x)")
    assert verdicts[5].endswith("not measured ('chunks 64' or 'chunks 2' at L b16 missing)")


@pytest.mark.parametrize("name, expected", [
    ("void posemamba::cuda::scan_span_backward_kernel<float>(posemamba::MultiPathScanBwdParams, long)",
     "scan_span_backward_kernel"),
    ("void posemamba::cuda::sum_partials_kernel<double>(const double *, long, long, long, double *)",
     "sum_partials_kernel")])
def test_kernel_short_name(name, expected):
    assert gpu_report.kernel_short_name(name) == expected


def test_benchmark_summary_leaves_out_failed_benchmarks():
    """A benchmark that raised (no timings) must not stop the summary of the others."""
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("benchmarks_conftest", os.path.join(BENCHMARKS, "conftest.py"))
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)

    def bench(name, data):
        return SimpleNamespace(group="g", name=name, stats=SimpleNamespace(data=data, median=0.002 if data else None))

    lines = []
    reporter = SimpleNamespace(section=lambda *args: None, write_line=lines.append)
    session = SimpleNamespace(benchmarks=[bench("test[S-fused]", [0.002]), bench("test[S-unfused]", [])])
    conftest.pytest_terminal_summary(reporter, SimpleNamespace(_benchmarksession=session))
    assert lines == ["g: fused 2.0 ms (1.0x)"]


def test_split_settings_name_each_split():
    labels = [label for label, _ in gpu_report.SPLIT_SETTINGS]
    assert labels == ["chunks 2", "chunks 16", "chunks 64", "warps fwd", "warps", "warps all"]
    for label, settings in gpu_report.SPLIT_SETTINGS:
        expected = {"warps": "1", "warps all": "1", "warps fwd": "forward"}.get(label, "0")
        assert settings["POSEMAMBA_CUDA_WARP_SPANS"] == expected
        assert (gpu_report.HINT_EVERY_PATH in settings) == (label == "warps all")


def test_model_breakdown_prints_a_table(capsys):
    # On a CPU the same code profiles operators: a small model, a short clip.
    gpu_report.model_breakdown("cpu", "S", batch=1, frames=9)
    out = capsys.readouterr().out
    assert "PoseMamba-S training step, T=9, batch 1, by operator:" in out and "Self CPU" in out

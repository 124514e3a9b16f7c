"""benchmarks/cuda_resources.py's parts that need no toolkit: the README's static instruction counts
come from its reading of cuobjdump's SASS (and, by source line, of nvdisasm's), so that reading, and
how it finds its tools, are checked here on made-up listings and stand-in tools."""
import os
import shutil
import stat
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.append(BENCHMARKS)  # after the tests' own folder: benchmarks/ has a conftest.py too

import cuda_resources  # noqa: E402

requires_cxxfilt = pytest.mark.skipif(shutil.which("c++filt") is None, reason="needs c++filt (binutils)")

# posemamba::cuda::scan_span_kernel<float>(...) and scan_warp_spans_kernel<float>(...), as nvcc mangles them.
CHUNKED = "_ZN9posemamba4cuda16scan_span_kernelIfEEvNS_19MultiPathScanParamsEllPKfPNS_8StateMapIfEEPf"
WARP = ("_ZN9posemamba4cuda22scan_warp_spans_kernelIfEEvNS_19MultiPathScanParamsElllPKN2at10OpMathTypeIT_E4typeE"
        "PNS_8StateMapIS7_EEPS7_")


def listing(name, instructions):
    """cuobjdump -sass's layout for one function: its header, then an instruction per 16 bytes."""
    lines = ["", "\tcode for sm_90", f"\t\tFunction : {name}", '\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"']
    for i, text in enumerate(instructions):
        lines.append(f"        /*{16 * i:04x}*/                   {text} ;    /* 0x000fe20000000800 */")
    return "\n".join(lines) + "\n"


def branch_to(index):
    return f"BRA 0x{16 * index:x}"


@requires_cxxfilt
def test_sass_functions_strip_predicates_and_find_loops_from_backward_branches():
    sass = listing(CHUNKED, ["MOV R1, R2", "@P0 FFMA R3, R4, R5, R6", "@!P1 " + branch_to(1), "EXIT"])
    [(kernel, template_args, opcodes, loops)] = list(cuda_resources.sass_functions(sass))
    assert (kernel, template_args) == ("scan_span_kernel", "float")
    assert opcodes == ["MOV", "FFMA", "BRA", "EXIT"]
    assert loops == [(1, 2)]


@requires_cxxfilt
def test_state_entry_loop_is_the_innermost_loop_around_a_barrier_inside_the_chunk_loop():
    entry_loop = ["MUFU.EX2 R1, R1", "FFMA R2, R1, R2, R3", "BAR.SYNC.DEFER_BLOCKING 0x0", "LDS R4, [R5]"]
    body = (["MOV R0, R1"]                                        # 0: the chunk loop starts
            + ["BAR.SYNC.DEFER_BLOCKING 0x0"]                     # 1: the chunk's staging barrier
            + entry_loop + [branch_to(2)]                         # 2-6: the loop over state entries
            + ["BAR.SYNC.DEFER_BLOCKING 0x0", branch_to(0)]       # 7-8: the chunk's last barrier
            + [branch_to(10), "EXIT"])                            # cold code: a loop of its own, no barrier
    [(kernel, template_args, counts, span)] = cuda_resources.state_entry_loops(listing(CHUNKED, body))
    assert kernel == "scan_span_kernel"
    assert counts == {"MUFU": 1, "FFMA": 1, "BAR": 1, "LDS": 1, "BRA": 1}
    assert span == (2, 6)


@requires_cxxfilt
def test_tile_loops_take_barrier_free_loops_of_a_tile_or_of_one_entry():
    tile = ["MUFU.EX2 R1, R1"] * 128 + ["FFMA R2, R1, R2, R3"] * 256
    entry = ["MUFU.EX2 R1, R1"] * 8 + ["FADD R2, R2, R3"] * 4
    body = (tile + [branch_to(0)]                                       # 0-384: a tile's 128 updates
            + ["MOV R0, R1"] + entry + [branch_to(386)] + ["IADD3 R7, R7, 1, RZ", branch_to(385)]  # one entry's 8
            + ["EXIT"])
    rows = cuda_resources.tile_loops(listing(WARP, body))
    assert [(kernel, updates) for kernel, _, updates, _, _, _ in rows] == [("scan_warp_spans_kernel", 128),
                                                                           ("scan_warp_spans_kernel", 8)]
    assert rows[0][3]["MUFU"] == 128 and rows[0][4] is None and rows[0][5] == (0, 384)
    assert sum(rows[1][3].values()) == 13 and rows[1][4] == 16  # the tile's loop around the entry's
    assert rows[1][5] == (386, 398)
    # A kernel with a barrier is the chunked split's, counted by state_entry_loops instead.
    assert cuda_resources.tile_loops(listing(WARP, ["BAR.SYNC 0x0"] + tile + [branch_to(1)])) == []


def line_info_listing(name, lines):
    """nvdisasm -g -c's layout for one function: its section banner, then per (source, text) a line
    comment where the source changes and the instruction, or a label line for text ".L_x_N:"."""
    out = [f"//--------------------- .text.{name} --------------------------",
           f"\t.section\t.text.{name},\"ax\",@progbits", f"{name}:", f".text.{name}:"]
    source, address = None, 0
    for where, text in lines:
        if text.endswith(":"):
            out.append(text)
            continue
        if where != source:
            file, line = where.split(":")
            out.append(f'\t//## File "/src/csrc/{file}", line {line}')
            source = where
        out.append(f"        /*{address:04x}*/                   {text} ;")
        address += 16
    return "\n".join(out) + "\n"


@requires_cxxfilt
def test_line_listing_reads_nvdisasm_labels_and_source_lines():
    # A loop over two source lines, its back edge to a label; a forward branch past it.
    body = [("a.cuh:10", "MOV R0, R1"), ("", ".L_x_1:"), ("multi_path_scan.h:172", "MUFU.EX2 R1, R1"),
            ("multi_path_scan.h:172", "MUFU.EX2 R2, R2"), ("a.cuh:11", "FFMA R3, R1, R2, R3"),
            ("a.cuh:11", "@P0 BRA `(.L_x_1)"), ("a.cuh:12", "@!P1 BRA `(.L_x_2)"), ("a.cuh:12", "NOP"),
            ("", ".L_x_2:"), ("a.cuh:13", "EXIT")]
    sass, sources = cuda_resources.line_listing(line_info_listing(WARP, body))
    [(kernel, template_args, opcodes, loops)] = list(cuda_resources.sass_functions(sass))
    assert (kernel, template_args) == ("scan_warp_spans_kernel", "float")
    assert opcodes == ["MOV", "MUFU", "MUFU", "FFMA", "BRA", "BRA", "NOP", "EXIT"]
    assert loops == [(1, 4)]  # the back edge only; the forward branch went to 0x70, past it
    assert sources[(kernel, template_args)] == ["a.cuh:10", "multi_path_scan.h:172", "multi_path_scan.h:172",
                                                "a.cuh:11", "a.cuh:11", "a.cuh:12", "a.cuh:12", "a.cuh:13"]
    lines = cuda_resources.lines_of_loop(opcodes, sources[(kernel, template_args)], 1, 4)
    assert lines == [("a.cuh:11", 2, {"FFMA": 1, "BRA": 1}), ("multi_path_scan.h:172", 2, {"MUFU": 2})]


def test_line_listing_marks_a_line_past_its_files_end(tmp_path):
    # nvdisasm's line table can name the wrong file for an inlined line: one past the file's end shows it.
    header = tmp_path / "short.cuh"
    header.write_text("a\nb\nc\n")
    listing = line_info_listing(WARP, [("a.cuh:1", "MOV R0, R1"), ("a.cuh:2", "EXIT")]).replace(
        '"/src/csrc/a.cuh", line 1', f'"{header}", line 2').replace('"/src/csrc/a.cuh", line 2', f'"{header}", line 5')
    _, sources = cuda_resources.line_listing(listing)
    assert list(sources.values()) == [["short.cuh:2", "short.cuh:5?"]]


def stand_in(folder, name, script):
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + script + "\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    return path


def test_cuobjdump_runs_with_nvdisasm_from_its_own_folder_on_the_path(tmp_path, monkeypatch):
    tools = tmp_path / "bin"
    tools.mkdir()
    # Like cuobjdump 13.5: disassembles only where nvdisasm is on the PATH.
    cuobjdump = stand_in(str(tools), "cuobjdump", 'command -v nvdisasm >/dev/null || { echo "no nvdisasm" >&2; '
                                                  'exit 1; }; echo "Function : listing"')
    stand_in(str(tools), "nvdisasm", "exit 0")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    found, environment = cuda_resources.find_cuobjdump()
    assert found == cuobjdump
    assert cuda_resources.disassemble(found, environment, "kernel.o").strip() == "Function : listing"


def test_a_failing_cuobjdump_stops_with_a_message_naming_nvdisasm(tmp_path, monkeypatch):
    cuobjdump = stand_in(str(tmp_path), "cuobjdump", 'echo "could not find nvdisasm" >&2; exit 1')
    with pytest.raises(SystemExit) as stopped:
        cuda_resources.disassemble(cuobjdump, dict(os.environ), "kernel.o")
    assert "nvdisasm" in str(stopped.value) and "could not find nvdisasm" in str(stopped.value)


@requires_cxxfilt
def test_kernel_usage_keeps_each_kernel_its_own_stack_and_spills():
    # ptxas's report of a kernel, then of a device function it calls that was not inlined.
    log = "\n".join([
        f"ptxas info    : Compiling entry function '{CHUNKED}' for 'sm_90'",
        f"ptxas info    : Function properties for {CHUNKED}",
        "    56 bytes stack frame, 88 bytes spill stores, 136 bytes spill loads",
        "ptxas info    : Used 128 registers, used 1 barriers, 56 bytes cumulative stack size, 27392 bytes smem",
        "ptxas info    : Function properties for _ZN9posemamba4cuda6helperEv",
        "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads",
    ])
    [row] = cuda_resources.kernel_usage(log)
    assert row == {"kernel": "scan_span_kernel", "args": "float", "stack": 56, "spills": 88, "registers": 128,
                   "smem": 27392}

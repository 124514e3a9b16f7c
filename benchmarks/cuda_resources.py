"""Registers, local memory (stack frame), spills and shared memory of every CUDA kernel, from ptxas.

    python benchmarks/cuda_resources.py            # sm_90, float kernels
    python benchmarks/cuda_resources.py --arch 80 --dtype all

Needs nvcc (CUDA_HOME, else /usr/local/cuda), not a GPU: occupancy limits and local-memory traffic
can be checked on any machine with the toolkit. Compiles csrc/cuda/*.cu as setup.py does (-O3), with
`-Xptxas -v`, and prints one line per kernel. With --sass (needs cuobjdump) it also counts the machine
instructions of each scan kernel's loop over state entries (the chunked split) or over a tile's steps
(the warp splits): the kernels' cost per state update, short of timing them. With --lines (needs
cuobjdump and nvdisasm) it compiles with -lineinfo and splits each of those loops by source line:
where a loop's instructions come from.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = {"float": "float", "double": "double", "half": "c10::Half", "bfloat16": "c10::BFloat16"}
ENTRY = re.compile(r"Compiling entry function '(\w+)'")
KERNEL = re.compile(r"posemamba::cuda::(\w+)<([^>]*)>")
SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")
SASS_PREDICATE = re.compile(r"^@!?U?P\w+\s+")
SASS_BRANCH = re.compile(r"^(?:@!?U?P\w+\s+)?BRA\S*\s+(?:\S+,\s*)?0x([0-9a-f]+)")
USAGE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads|"
                   r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def nvcc_command(source, arch, output, line_info=False):
    """setup.py's compile of `source` for one architecture, with ptxas's resource report; with
    line_info, the source lines of the machine code too (-lineinfo: the same code, annotated)."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    includes = [f"-I{path}" for path in include_paths() + [sysconfig.get_paths()["include"], os.path.join(ROOT, "csrc")]]
    return [nvcc, "-c", source, "-o", output, *includes, *COMMON_NVCC_FLAGS, "-std=c++20", "-O3",
            "--compiler-options", "-fPIC", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v",
            *(["-lineinfo"] if line_info else [])]


def demangle(name):
    """posemamba::cuda::kernel<args> of a mangled kernel name, as (kernel, args)."""
    readable = subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip()
    match = KERNEL.search(readable)
    return (match.group(1), match.group(2)) if match else (readable, "")


def kernel_usage(log):
    """Per kernel: its name, template arguments, registers, stack, spill stores and shared bytes. (A
    device function that is not inlined gets "Function properties" of its own after its caller's
    registers line: those are not the kernel's.)"""
    rows, current = [], None
    for line in log.splitlines():
        entry = ENTRY.search(line)
        if entry:
            kernel, template_args = demangle(entry.group(1))
            current = {"kernel": kernel, "args": template_args}
            rows.append(current)
            continue
        usage = USAGE.search(line)
        if usage and current is not None:
            if usage.group(1):
                current.update(stack=int(usage.group(1)), spills=int(usage.group(2)))
            else:
                current.update(registers=int(usage.group(4)), smem=int(usage.group(5) or 0))
                current = None
    return rows


def find_cuobjdump():
    """cuobjdump from the PATH, the toolkit, or the nvidia-cuda-cuobjdump wheel (the toolkit on the
    development machine has none: `pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm` puts both in
    site-packages), and the environment to run it in: cuobjdump 13.5 disassembles through nvdisasm,
    which it looks for on the PATH, so the folders of both go first there."""
    toolkit = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    folders = [os.path.join(toolkit, "bin")] + [os.path.join(path, "nvidia", "cu13", "bin") for path in sys.path]

    def find(tool):
        candidates = [shutil.which(tool)] + [os.path.join(folder, tool) for folder in folders]
        return next((path for path in candidates if path and os.access(path, os.X_OK)), None)

    cuobjdump, nvdisasm = find("cuobjdump"), find("nvdisasm")
    if cuobjdump is None:
        return None, None
    tool_folders = [os.path.dirname(tool) for tool in (cuobjdump, nvdisasm) if tool]
    return cuobjdump, dict(os.environ, PATH=os.pathsep.join(tool_folders + [os.environ.get("PATH", "")]))


def disassemble(cuobjdump, environment, binary):
    result = subprocess.run([cuobjdump, "-sass", binary], capture_output=True, text=True, env=environment)
    if result.returncode != 0:
        sys.exit(f"cuda_resources: {cuobjdump} -sass failed (for cuobjdump 13.5 and later, nvdisasm must be on "
                 f"the PATH or next to it: pip install nvidia-cuda-nvdisasm):\n{result.stderr[-2000:]}")
    return result.stdout


def disassemble_with_lines(cuobjdump, environment, binary, scratch):
    """nvdisasm's listing of `binary`'s sm code with each instruction's source line (`nvdisasm -g -c` on
    the cubin that `cuobjdump -xelf` extracts into scratch)."""
    folder = tempfile.mkdtemp(dir=scratch)
    extracted = subprocess.run([cuobjdump, "-xelf", "all", os.path.abspath(binary)], cwd=folder,
                               capture_output=True, text=True, env=environment)
    cubins = sorted(glob.glob(os.path.join(folder, "*.cubin")))
    nvdisasm = shutil.which("nvdisasm", path=environment["PATH"])
    if extracted.returncode != 0 or not cubins or nvdisasm is None:
        sys.exit(f"cuda_resources: --lines needs cuobjdump -xelf and nvdisasm (pip install nvidia-cuda-nvdisasm):\n"
                 f"{extracted.stderr[-2000:]}")
    return "".join(subprocess.run([nvdisasm, "-g", "-c", cubin], capture_output=True, text=True, check=True).stdout
                   for cubin in cubins)


NVDISASM_FUNCTION = re.compile(r"^//-+ \.text\.(\S+) -+$")
NVDISASM_LINE = re.compile(r'//## File "([^"]+)", line (\d+)')
NVDISASM_LABEL = re.compile(r"^(\.L\w+):")
NVDISASM_TARGET = re.compile(r"`\((\.L\w+)\)")


def source_label(path, line, line_counts):
    """ "file:line" for a line comment of nvdisasm's, or "file:line?" where the file (found on disk) has
    fewer lines: the line table sometimes names the wrong file for an inlined function's line (its
    number right, the file another header's), which a line past the end gives away; line_counts caches
    the files' lengths."""
    if path not in line_counts:
        try:
            with open(path, "rb") as source:
                line_counts[path] = source.read().count(b"\n")
        except OSError:
            line_counts[path] = None
    count = line_counts[path]
    return f"{os.path.basename(path)}:{line}" + ("?" if count is not None and int(line) > count else "")


def line_listing(listing):
    """nvdisasm -g's listing as cuobjdump -sass lays it out (a "Function :" header per kernel, branch
    targets as addresses, for sass_functions), and per kernel (kernel, template arguments) the source of
    each instruction in order, as "file:line" (the innermost: the inlined function's own line; see
    source_label for a "?" after it)."""
    functions, sources, current, line_counts = [], {}, None, {}
    for text in listing.splitlines():
        function = NVDISASM_FUNCTION.match(text.strip())
        if function:
            current = {"name": function.group(1), "instructions": [], "labels": {}, "source": "?"}
            functions.append(current)
            continue
        if current is None:
            continue
        line = NVDISASM_LINE.search(text)
        label = NVDISASM_LABEL.match(text.strip())
        instruction = SASS_LINE.search(text)
        if line:
            current["source"] = source_label(line.group(1), line.group(2), line_counts)
        elif label:
            current["labels"][label.group(1)] = 16 * len(current["instructions"])
        elif instruction:
            current["instructions"].append((instruction.group(2), current["source"]))
    sass = []
    for function in functions:
        sass.append(f"\n\t\tFunction : {function['name']}")
        for i, (text, _) in enumerate(function["instructions"]):
            labels = function["labels"]
            text = NVDISASM_TARGET.sub(lambda m: f"0x{labels[m.group(1)]:x}" if m.group(1) in labels else m.group(0),
                                       text)
            sass.append(f"        /*{16 * i:04x}*/ {text} ;")
        sources[demangle(function["name"])] = [source for _, source in function["instructions"]]
    return "\n".join(sass) + "\n", sources


def sass_functions(sass):
    """Per kernel in cuobjdump's SASS: (kernel, template arguments, each instruction's opcode, its loops
    as (first, last) instruction indices, from the backward branches)."""
    for function in re.split(r"\n\s*Function : ", sass)[1:]:
        kernel, template_args = demangle(function.split()[0])
        instructions = [(int(address, 16), text) for address, text in SASS_LINE.findall(function)]
        index = {address: i for i, (address, _) in enumerate(instructions)}
        opcodes = [SASS_PREDICATE.sub("", text).split()[0].split(".")[0] for _, text in instructions]
        loops = [(index[int(target, 16)], i) for i, (address, text) in enumerate(instructions)
                 for target in SASS_BRANCH.findall(text)
                 if int(target, 16) < address and int(target, 16) in index]
        yield kernel, template_args, opcodes, loops


def opcode_counts(opcodes):
    counts = {}
    for opcode in opcodes:
        counts[opcode] = counts.get(opcode, 0) + 1
    return counts


def state_entry_loops(sass):
    """Per scan kernel: the SASS of its loops over state entries (each the innermost loop around a block
    barrier; the compiler may keep a copy per pass), as (kernel, template arguments, instruction counts
    by opcode, the loop's first and last instruction indices)."""
    rows = []
    for kernel, template_args, opcodes, loops in sass_functions(sass):
        innermost = set()
        for barrier in (i for i, opcode in enumerate(opcodes) if opcode == "BAR"):
            holding = [(first, last) for first, last in loops if first <= barrier <= last]
            if holding:
                innermost.add(min(holding, key=lambda loop: loop[1] - loop[0]))
        # A loop around other barrier loops (a chunk loop) is not a loop over state entries, and one is
        # always inside the loop over chunks, which holds more barriers (the compiler also lays out
        # cold code after that loop, with back edges that look like loops around its last barrier).
        def barriers_in(first, last):
            return sum(1 for i, opcode in enumerate(opcodes[first:last + 1]) if opcode == "BAR")

        for first, last in sorted(innermost):
            if any(first < f and l <= last or first <= f and l < last for f, l in innermost):
                continue
            if not any(f <= first and last <= l and barriers_in(f, l) > barriers_in(first, last) for f, l in loops):
                continue
            rows.append((kernel, template_args, opcode_counts(opcodes[first:last + 1]), (first, last)))
    return rows


def tile_loops(sass):
    """Per barrier-free scan kernel (the warp splits): the SASS of its loops over a tile's 8 steps x 16
    state entries (each an innermost loop with at least 128 exps; one or more per pass) or over one
    entry's 8 steps of a tile (8 to 15 exps: the backward's last pass), as (kernel, template arguments,
    state updates an iteration, instruction counts by opcode, for a loop over one entry the
    instructions of the smallest loop around it, the tile's, else None, and the loop's first and last
    instruction indices)."""
    rows = []
    for kernel, template_args, opcodes, loops in sass_functions(sass):
        if "BAR" in opcodes:
            continue
        for first, last in sorted(set(loops)):
            if any(first <= f and l <= last and (f, l) != (first, last) for f, l in loops):
                continue  # not innermost
            counts = opcode_counts(opcodes[first:last + 1])
            exps = counts.get("MUFU", 0)
            if exps >= 128:
                rows.append((kernel, template_args, 128, counts, None, (first, last)))
            elif 8 <= exps < 16:
                around = [l - f + 1 for f, l in loops if f <= first and last <= l and (f, l) != (first, last)]
                rows.append((kernel, template_args, 8, counts, min(around, default=None), (first, last)))
    return rows


def lines_of_loop(opcodes, sources, first, last):
    """The loop [first, last] of a kernel by source line, from its instructions' opcodes (sass_functions)
    and sources (line_listing's): (source, instructions, counts by opcode) per line, most instructions
    first."""
    by_line = {}
    for opcode, source in zip(opcodes[first:last + 1], sources[first:last + 1]):
        counts = by_line.setdefault(source, {})
        counts[opcode] = counts.get(opcode, 0) + 1
    return sorted(((source, sum(counts.values()), counts) for source, counts in by_line.items()),
                  key=lambda row: (-row[1], row[0]))


def top_opcodes(counts, n):
    return ", ".join(f"{opcode} {count}" for opcode, count in sorted(counts.items(), key=lambda c: -c[1])[:n])


def print_lines(lines, shown=16):
    """A loop's instructions by source line (lines_of_loop), the lines with the most first."""
    if lines is None:
        return
    for source, total, counts in lines[:shown]:
        print(f"    {total:>5}  {source:<34} {top_opcodes(counts, 5)}")
    rest = sum(total for _, total, _ in lines[shown:])
    if rest:
        print(f"    {rest:>5}  ({len(lines) - shown} more lines)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="90", help="compute capability without the dot (default 90)")
    parser.add_argument("--dtype", default="float", choices=[*DTYPES, "all"])
    parser.add_argument("--sass", action="store_true",
                        help="also count the instructions of each scan kernel's loop over state entries "
                             "(needs cuobjdump)")
    parser.add_argument("--lines", action="store_true",
                        help="--sass, with each loop's instructions split by source line (needs nvdisasm too)")
    args = parser.parse_args()
    args.sass = args.sass or args.lines
    cuobjdump, environment = find_cuobjdump() if args.sass else (None, None)
    if args.sass and cuobjdump is None:
        sys.exit("cuda_resources: --sass needs cuobjdump (CUDA_HOME/bin, the PATH, "
                 "or pip install nvidia-cuda-cuobjdump)")

    def wanted(template_args):
        return args.dtype == "all" or template_args.split(",")[0].strip() == DTYPES[args.dtype]

    print(f"{'kernel':<34} {'template arguments':<22} {'registers':>9} {'stack B':>8} {'spills B':>9} {'smem B':>7}")
    loops, tiles = [], []  # each with its instructions by source line (None without --lines)
    with tempfile.TemporaryDirectory() as scratch:
        for source in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))):
            binary = os.path.join(scratch, os.path.basename(source) + ".o")
            result = subprocess.run(nvcc_command(source, args.arch, binary, line_info=args.lines), capture_output=True,
                                    text=True)
            if result.returncode != 0:
                sys.exit(f"nvcc failed on {source}:\n{result.stderr[-3000:]}")
            for row in kernel_usage(result.stdout + result.stderr):
                if wanted(row["args"]):
                    print(f"{row['kernel']:<34} {row['args']:<22} {row.get('registers', 0):>9} "
                          f"{row.get('stack', 0):>8} {row.get('spills', 0):>9} {row.get('smem', 0):>7}")
            if not cuobjdump:
                continue
            if args.lines:
                sass, sources = line_listing(disassemble_with_lines(cuobjdump, environment, binary, scratch))
                opcodes = {(kernel, template_args): ops for kernel, template_args, ops, _ in sass_functions(sass)}
            else:
                sass, sources = disassemble(cuobjdump, environment, binary), None

            def with_lines(row):
                if not sources:
                    return row, None
                kernel_id, (first, last) = (row[0], row[1]), row[-1]
                return row, lines_of_loop(opcodes[kernel_id], sources[kernel_id], first, last)

            loops += [with_lines(loop) for loop in state_entry_loops(sass) if wanted(loop[1])]
            tiles += [with_lines(loop) for loop in tile_loops(sass) if wanted(loop[1])]
    if loops:
        print("\nEach scan kernel's loop over state entries, one iteration = one state entry of a thread's "
              "steps (static SASS; branches not taken still count):")
        for (kernel, template_args, counts, _), lines in loops:
            print(f"{kernel:<34} {template_args:<22} {sum(counts.values()):>5} instructions: {top_opcodes(counts, 8)}")
            print_lines(lines)
    if tiles:
        print("\nEach barrier-free scan kernel's loops over a tile, one iteration = a warp's 8 steps x 16 state "
              "entries (128 updates) or one entry's 8 steps (8), one or more loops per pass (static SASS; "
              "branches not taken still count):")
        for (kernel, template_args, updates, counts, tile_total, _), lines in tiles:
            total = sum(counts.values())
            print(f"{kernel:<34} {template_args:<22} {total:>5} instructions ({total / updates:.1f} a state update, "
                  f"{updates:>3} an iteration): {top_opcodes(counts, 8)}")
            if tile_total:
                print(f"{'':<34} {'':<22} {tile_total:>5} instructions in the smallest loop around it (the tile's), "
                      f"{tile_total - total} of them outside it (cold code laid out inside included)")
            print_lines(lines)


if __name__ == "__main__":
    main()

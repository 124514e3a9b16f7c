"""Registers, local memory (stack frame), spills and shared memory of every CUDA kernel, from ptxas.

    python benchmarks/cuda_resources.py            # sm_90, float kernels
    python benchmarks/cuda_resources.py --arch 80 --dtype all

Needs nvcc (CUDA_HOME, else /usr/local/cuda), not a GPU: occupancy limits and local-memory traffic
can be checked on any machine with the toolkit. Compiles csrc/cuda/*.cu as setup.py does (-O3), with
`-Xptxas -v`, and prints one line per kernel.
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = {"float": "float", "double": "double", "half": "c10::Half", "bfloat16": "c10::BFloat16"}
ENTRY = re.compile(r"Compiling entry function '(\w+)'")
KERNEL = re.compile(r"posemamba::cuda::(\w+)<([^>]*)>")
USAGE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads|"
                   r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def nvcc_command(source, arch, output):
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    includes = [f"-I{path}" for path in include_paths() + [sysconfig.get_paths()["include"], os.path.join(ROOT, "csrc")]]
    return [nvcc, "-c", source, "-o", output, *includes, *COMMON_NVCC_FLAGS, "-std=c++20", "-O3",
            "--compiler-options", "-fPIC", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v"]


def demangle(name):
    """posemamba::cuda::kernel<args> of a mangled kernel name, as (kernel, args)."""
    readable = subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip()
    match = KERNEL.search(readable)
    return (match.group(1), match.group(2)) if match else (readable, "")


def kernel_usage(log):
    """Per kernel: its name, template arguments, registers, stack, spill stores and shared bytes."""
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
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="90", help="compute capability without the dot (default 90)")
    parser.add_argument("--dtype", default="float", choices=[*DTYPES, "all"])
    args = parser.parse_args()
    print(f"{'kernel':<34} {'template arguments':<22} {'registers':>9} {'stack B':>8} {'spills B':>9} {'smem B':>7}")
    for source in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))):
        result = subprocess.run(nvcc_command(source, args.arch, os.devnull), capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"nvcc failed on {source}:\n{result.stderr[-3000:]}")
        for row in kernel_usage(result.stdout + result.stderr):
            if args.dtype == "all" or row["args"].split(",")[0].strip() == DTYPES[args.dtype]:
                print(f"{row['kernel']:<34} {row['args']:<22} {row.get('registers', 0):>9} {row.get('stack', 0):>8} "
                      f"{row.get('spills', 0):>9} {row.get('smem', 0):>7}")


if __name__ == "__main__":
    main()

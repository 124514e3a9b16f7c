"""Builds posemamba._C: the C++ CPU kernels always, the CUDA kernels where a CUDA toolkit is found.

posemamba compiles against the torch already installed in your environment (this avoids the ABI
mismatches a separately built torch causes), so install torch first and build without isolation:

    pip install --no-build-isolation -e .

Switches (environment variables):
    POSEMAMBA_CPU_ONLY=1      build the CPU kernels only, even where CUDA is found
    FORCE_CUDA=1              fail unless the CUDA kernels are built
    CUDA_HOME=/path           the toolkit to use (otherwise inferred from nvcc's location)
    TORCH_CUDA_ARCH_LIST      GPU architectures, e.g. "9.0" (default: the visible GPUs, else a list
                              of current data-centre and consumer architectures)
    MAX_JOBS                  parallel compile jobs (ninja)
    DEBUG=1                   -O0 -g instead of -O3
"""
import glob
import os
import platform
import shutil
import sys

from setuptools import find_packages, setup

try:
    import torch  # noqa: F401  (the extension is built against this torch)
except ImportError:
    sys.exit(
        "posemamba builds its kernels against your installed PyTorch, which this build cannot import.\n"
        "Install torch first, then build without isolation:\n"
        "    pip install torch && pip install --no-build-isolation -e .")

# pip builds a wheel even for an editable install, and without build isolation it does so with this
# environment's setuptools: one older than 70.1 needs the separate `wheel` package for that, which a
# venv whose torch does not pull a newer setuptools lacks (pip then stops at "invalid command
# 'bdist_wheel'", naming nothing). `setup.py build_ext --inplace` builds no wheel and needs neither.
WHEEL_COMMANDS = {"bdist_wheel", "dist_info", "editable_wheel"}
if WHEEL_COMMANDS.intersection(sys.argv):
    try:
        from setuptools.command.bdist_wheel import bdist_wheel  # noqa: F401  (setuptools >= 70.1)
    except ImportError:
        import importlib.util

        if importlib.util.find_spec("wheel") is None:
            sys.exit("pip builds posemamba as a wheel with this environment's setuptools, which is older than\n"
                     "70.1 and has no `wheel` package to do it with. Update it, then build again:\n"
                     "    pip install -U setuptools && pip install --no-build-isolation -e .")

CSRC = "csrc"
DEFAULT_CUDA_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"


def env_flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def find_cuda_home():
    """The CUDA toolkit root: CUDA_HOME/CUDA_PATH, else /usr/local/cuda, else nvcc's parent folder.

    Checked for the runtime library too: a wrapper script such as /usr/local/bin/nvcc points torch's own
    guess at /usr/local, which has no lib64/libcudart and fails only at link time.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in filter(None, candidates):
        has_nvcc = os.path.isfile(os.path.join(root, "bin", "nvcc"))
        has_cudart = glob.glob(os.path.join(root, "lib*", "libcudart*")) or glob.glob(
            os.path.join(root, "targets", "*", "lib", "libcudart*"))
        if has_nvcc and has_cudart:
            return root
    return None


def cuda_build_wanted():
    # The kernels (*.cu, one per dtype) and the plain C++ that registers them (*.cpp).
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")) + glob.glob(os.path.join(CSRC, "cuda", "*.cpp")))
    if env_flag("POSEMAMBA_CPU_ONLY") or not cuda_sources:
        if env_flag("FORCE_CUDA"):
            sys.exit("FORCE_CUDA=1 but " + ("POSEMAMBA_CPU_ONLY=1 is set" if cuda_sources else "there are no CUDA sources"))
        return None, []
    cuda_home = find_cuda_home()
    if cuda_home is None:
        if env_flag("FORCE_CUDA"):
            sys.exit("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the folder holding bin/nvcc")
        print("posemamba: no CUDA toolkit found, building the CPU kernels only", file=sys.stderr)
        return None, []
    return cuda_home, cuda_sources


def extensions():
    cuda_home, cuda_sources = cuda_build_wanted()
    if cuda_home:
        # torch.utils.cpp_extension reads CUDA_HOME once, when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            import torch

            if not torch.cuda.is_available():
                os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    debug = env_flag("DEBUG")
    # -fno-trapping-math lets the compiler turn the scan math's clamps and selects into vector blends
    # (we never rely on floating-point exception flags); without it the hot loops stay scalar.
    cxx_flags = (["-O0", "-g"] if debug else ["-O3"]) + ["-fno-trapping-math"]
    # The CPU kernels hand vector-extension values (csrc/cpu/scan_block_cpu.h) to inlined functions within
    # one ISA clone; GCC's note that passing such values by value depends on the ISA does not apply.
    cxx_flags.append("-Wno-psabi")
    link_flags = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is inlined into our code: without OpenMP here it runs on one thread.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    if platform.machine() in ("x86_64", "AMD64"):
        # The AVX-512 clones of the hot loops (csrc/cpu/cpu_dispatch.h) use full 512-bit registers.
        cxx_flags.append("-mprefer-vector-width=512")
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")) + glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    if cuda_home:
        # No --use_fast_math: the CUDA kernels' divisions round as the CPU kernels' do (the exp and the
        # sigmoid's reciprocal take the special-function unit on purpose, csrc/multi_path_scan.h).
        nvcc_flags = ["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"]
        return [CUDAExtension(
            "posemamba._C", sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, extra_link_args=link_flags,
            define_macros=[("POSEMAMBA_WITH_CUDA", None)])]
    return [CppExtension("posemamba._C", sources, extra_compile_args={"cxx": cxx_flags},
                         extra_link_args=link_flags)]


def main():
    ext_modules = extensions()  # first: it sets CUDA_HOME, which cpp_extension reads at import
    from torch.utils.cpp_extension import BuildExtension

    setup(
        name="posemamba",
        version="0.1.0",
        description="PoseMamba 3D human pose lifting around a fused multi-path selective scan (CPU and CUDA)",
        packages=find_packages(include=["posemamba", "posemamba.*"]),
        python_requires=">=3.9",
        install_requires=["torch>=2.4", "numpy", "einops", "pyyaml", "tqdm", "matplotlib"],
        extras_require={"test": ["pytest", "pytest-benchmark", "expecttest"]},
        package_data={"posemamba": ["configs/*.yaml", "data/*.json"]},
        entry_points={"console_scripts": ["posemamba = posemamba.cli:main"]},
        ext_modules=ext_modules,
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()

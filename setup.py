"""Build script. `kernels/` (Triton sources, linked from `fastgrpo/kernels/`) ships inside the package as
`fastgrpo.kernels`; `csrc/` builds the optional
C++/CUDA extension `fastgrpo._C` (CLIP image preprocessing for the rewards).

FASTGRPO_BUILD_EXT = auto (default) | off | cpu | cuda
  auto  the CUDA extension when the installed torch is a CUDA build (torch.version.cuda) and a CUDA toolkit is
        found (torch's CUDA_HOME), else the CPU-only one;
  cpu   the CPU-only extension; cuda: the CUDA one (with a warning and the CPU one when it cannot be built);
  off   no extension.
torch comes from the installed environment (install with `pip install --no-build-isolation`; torch is deliberately
not a build requirement, see README). The install never fails for the extension's sake: a failed CUDA build falls
back to the CPU extension, a failed CPU build (no compiler, say) to none, with a warning; fastgrpo then runs the
PyTorch fallback and `fastgrpo.ops.preprocess_backend()` says so.
"""
import glob
import os
import sys
import warnings

from setuptools import find_packages, setup

MODES = ("auto", "off", "cpu", "cuda")
CSRC = "csrc"
CPU_SOURCES = [f"{CSRC}/bindings.cpp", f"{CSRC}/preprocess_cpu.cpp"]
CUDA_SOURCES = [f"{CSRC}/preprocess_cuda.cu"]
DEPENDS = [f"{CSRC}/preprocess.h"]
# -ffp-contract=off: no FMA contraction, so the float steps that feed a rounding match torch's bit for bit;
# -fno-trapping-math lets the clamps become branch-free (vectorised) without changing any result
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-trapping-math"]
NVCC_FLAGS = ["-O3"]

packages = find_packages(include=["fastgrpo", "fastgrpo.*"])


def note(message: str) -> None:
    warnings.warn(f"fastgrpo: {message}", stacklevel=2)
    print(f"fastgrpo setup: {message}", file=sys.stderr)


def remove_stale_extension() -> None:
    """An editable install builds `fastgrpo/_C*.so` in the source tree; when this build makes none, an older one
    left there would still be imported."""
    for path in glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastgrpo", "_C.*")):
        if path.endswith((".so", ".pyd")):
            os.remove(path)
            note(f"removed the previously built {os.path.basename(path)}")


def extension_plan():
    """(extensions to try in order, build_ext class); empty when no extension is built."""
    mode = os.environ.get("FASTGRPO_BUILD_EXT", "auto").strip().lower() or "auto"
    if mode not in MODES:
        note(f"FASTGRPO_BUILD_EXT={mode!r} is not one of {MODES}; using 'auto'")
        mode = "auto"
    if mode == "off":
        return [], None
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as err:
        note(f"torch is not importable at build time ({err}); building without the C++ extension. Install torch "
             "first and use `pip install --no-build-isolation`.")
        return [], None

    # at::parallel_for is inline OpenMP: without -fopenmp the CPU kernel would run on one thread. Linking it
    # resolves to the libgomp.so.1 that torch has already loaded (same soname), not a second runtime.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") and torch.backends.openmp.is_available() else []

    def cpu_extension():
        return cpp_extension.CppExtension("fastgrpo._C", CPU_SOURCES, depends=DEPENDS,
                                          extra_compile_args={"cxx": CXX_FLAGS + openmp}, extra_link_args=openmp)

    def cuda_extension():
        return cpp_extension.CUDAExtension("fastgrpo._C", CPU_SOURCES + CUDA_SOURCES, depends=DEPENDS,
                                           define_macros=[("FASTGRPO_WITH_CUDA", None)],
                                           extra_compile_args={"cxx": CXX_FLAGS + openmp, "nvcc": NVCC_FLAGS},
                                           extra_link_args=openmp)

    cuda_possible = bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None
    plans = []
    if mode in ("auto", "cuda") and cuda_possible:
        plans.append(cuda_extension)
    elif mode == "cuda":
        note(f"FASTGRPO_BUILD_EXT=cuda, but torch {torch.__version__} has no CUDA (torch.version.cuda="
             f"{torch.version.cuda}) or no CUDA toolkit was found (CUDA_HOME={cpp_extension.CUDA_HOME}); "
             "building the CPU extension only")
    plans.append(cpu_extension)

    class OptionalBuildExt(cpp_extension.BuildExtension):
        """torch's BuildExtension, trying the planned extensions in order and never failing the install."""

        def build_extensions(self):
            ext = self.extensions[0]
            compile_methods = (self.compiler.compile, self.compiler._compile)
            for i, make in enumerate(plans):
                if i:  # the fallback takes over the Extension object setuptools already prepared
                    for key, value in vars(make()).items():
                        if not key.startswith("_"):
                            setattr(ext, key, value)
                try:
                    super().build_extensions()
                    return
                except Exception as err:  # a missing compiler, a toolkit mismatch, a compile error: fall back
                    kind = "CUDA" if make is cuda_extension else "CPU"
                    after = "trying the CPU-only one" if i + 1 < len(plans) else (
                        "fastgrpo will use its PyTorch fallback")
                    note(f"building the {kind} extension failed ({type(err).__name__}: {err}); {after}")
                    # BuildExtension wraps the compiler's methods on each call: undo before retrying
                    self.compiler.compile, self.compiler._compile = compile_methods
            self.extensions = []
            remove_stale_extension()

    return [plans[0]()], OptionalBuildExt


extensions, build_ext_class = extension_plan()
if not extensions:
    remove_stale_extension()

setup(
    packages=packages,
    ext_modules=extensions,
    cmdclass={"build_ext": build_ext_class} if build_ext_class else {},
)

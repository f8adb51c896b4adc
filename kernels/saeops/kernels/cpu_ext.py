"""Optional C++ kernels for the CPU hot path, compiled on first use.

`torch.utils.cpp_extension` builds `csrc/sparse_cpu.cpp` with the machine's C++ compiler
(needs a C++ compiler and ninja; about 40 s once, then cached under `TORCH_EXTENSIONS_DIR`, by default
`~/.cache/torch_extensions`). It is built for the CPU it runs on (`-march=native`), so the
cache key includes this CPU's feature flags. With `SAEOPS_CPU_EXT=0`, or without a compiler
on PATH, `module()` returns None and callers use the torch path; a build that fails warns
once and does the same.

Kernels (fp32/fp64; see the source for the algorithms):
- `topk_bias(scores, bias, k, members)`: per-row top-k of `scores + bias`, one read per row;
- `scatter_t(order, bounds, w, rows, k, n)`: latent-sorted weighted row sums as `[d, n]`;
- `decode_backward(order, bounds, values, grad_out, W_dec, k, need_values, need_weight)`:
  the sparse decoder's value and weight gradients in one pass.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import warnings
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("csrc") / "sparse_cpu.cpp"


def enabled() -> bool:
    return os.environ.get("SAEOPS_CPU_EXT", "1") != "0"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def build_name() -> str:
    """Extension name: changes with the source (its bytes and its path: the build records the
    path, so two checkouts sharing one name would rebuild each other's), torch and the CPU."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), str(SOURCE).encode(), torch.__version__.encode(), _cpu_flags().encode()):
        h.update(part)
    return f"saeops_sparse_cpu_{h.hexdigest()[:12]}"


def module() -> ModuleType | None:
    """The compiled extension, or None (disabled, no compiler, or the build failed: warned once)."""
    return _build() if enabled() else None


@functools.cache
def _build() -> ModuleType | None:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        # A runtime image without a toolchain: the torch path is the plan, not a fault.
        log.info("no C++ compiler (%s) on PATH: sparse CPU kernels use the torch path", compiler)
        return None
    try:
        from torch.utils.cpp_extension import load

        log.info("loading the C++ CPU kernels (built once per machine, ~40 s, then cached)")
        return load(
            name=build_name(),
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # no ninja, a failed build: the torch path still works
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        warnings.warn(
            f"saeops: the C++ CPU kernels could not be built ({type(e).__name__}: {reason[:200]}); "
            "using the torch path (set SAEOPS_CPU_EXT=0 to skip the attempt)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None

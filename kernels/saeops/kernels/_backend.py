"""Backend selection: which implementation of the sparse primitives a call uses."""

from __future__ import annotations

import os
from functools import cache
from types import ModuleType
from typing import Literal, cast, get_args

import torch

Backend = Literal["auto", "triton", "torch", "reference"]
BACKENDS: tuple[str, ...] = get_args(Backend)


class KernelConfig:
    """Process-wide defaults; every public op also takes `backend=` / `use_triton=` overrides."""

    def __init__(self) -> None:
        env = os.environ.get("SAEOPS_KERNEL_BACKEND", "auto")
        self.backend: Backend = cast(Backend, env) if env in BACKENDS else "auto"
        # Mirrors DictionarySpec.use_triton_kernel (default False): Triton is opt-in on CUDA.
        self.use_triton_kernel: bool = os.environ.get("SAEOPS_USE_TRITON", "0") == "1"


CONFIG = KernelConfig()


def configure(backend: Backend | None = None, use_triton_kernel: bool | None = None) -> None:
    """Set the process-wide defaults (the runtime calls this from the dictionary spec)."""
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        CONFIG.backend = backend
    if use_triton_kernel is not None:
        CONFIG.use_triton_kernel = use_triton_kernel


@cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(device: torch.device, backend: Backend | None, use_triton: bool | None) -> str:
    """Turn `auto` into a concrete backend: Triton only on CUDA, when importable and wanted."""
    chosen = backend or CONFIG.backend
    if chosen not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {chosen!r}")
    if chosen != "auto":
        return chosen
    wanted = CONFIG.use_triton_kernel if use_triton is None else use_triton
    if wanted and device.type == "cuda" and triton_available():
        return "triton"
    return "torch"


def primitives(name: str) -> ModuleType:
    """The module implementing `gather_sum`, `gather_dot`, `scatter_sum` for a backend.

    The Triton module is imported lazily: `@triton.jit` reads TRITON_INTERPRET when it runs,
    so tests can switch the interpreter on before the first Triton call.
    """
    if name == "triton":
        from saeops.kernels import triton_ops

        return triton_ops
    from saeops.kernels import torch_ops

    return torch_ops

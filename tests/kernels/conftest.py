"""Kernel tests: Triton kernels run under the interpreter on CPU tensors.

TRITON_INTERPRET must be set before `@triton.jit` decorates the kernels, i.e. before
`saeops.kernels.triton_ops` is first imported; `saeops.kernels` imports it lazily, and the
`triton_interpreted` fixture reloads it if something imported it earlier without the flag.

`SAEOPS_TEST_DEVICE=cuda` runs the same tests on a GPU instead (compiled Triton, tensors
created on CUDA by default): `bench/kernels/gpu_check.sh` does this on a lent GPU.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import cast

TEST_DEVICE = os.environ.get("SAEOPS_TEST_DEVICE", "cpu")
if TEST_DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402 (TRITON_INTERPRET first)
import torch  # noqa: E402

from saeops.kernels import Kernels  # noqa: E402
from saeops.kernels.backend import Backend, triton_available  # noqa: E402

HAS_TRITON = triton_available()
requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

# Backends with their own kernels; "reference" is what they are compared against.
FAST_BACKENDS = [
    pytest.param("torch", id="torch"),  # with the C++ CPU kernels where they apply (fp32/fp64)
    pytest.param("torch-noext", id="torch-noext"),  # the pure torch path (SAEOPS_CPU_EXT=0)
    pytest.param("triton", id="triton", marks=requires_triton),
]


@pytest.fixture(autouse=True)
def _seed_and_device() -> Iterator[None]:
    torch.manual_seed(0)
    if TEST_DEVICE == "cpu":
        yield
        return
    torch.set_default_device(TEST_DEVICE)
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.fixture(scope="session")
def triton_interpreted() -> ModuleType:
    from saeops.kernels import triton_ops

    if TEST_DEVICE != "cpu":
        return triton_ops  # compiled for the GPU
    if type(triton_ops._gather_sum_kernel).__name__ != "InterpretedFunction":
        triton_ops = importlib.reload(triton_ops)
    return triton_ops


@pytest.fixture
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name: str = request.param
    if name == "triton":
        request.getfixturevalue("triton_interpreted")
    if name == "torch-noext":
        monkeypatch.setenv("SAEOPS_CPU_EXT", "0")
        return "torch"
    return name


def kernels_for(backend: str) -> Kernels:
    """A fresh `Kernels` of the backend a test is parametrised with."""
    return Kernels(cast(Backend, backend))


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    """assert_close tolerances of a fast path against the fp32 reference on the same inputs.

    The kernels accumulate in fp32 and round once when they store, so the error is about half
    an ulp of the result: 2^-24 (fp32), 2^-11 (fp16), 2^-8 (bf16) relative. The bounds leave
    a few ulps for the different summation orders (fp32: 1e-5 as the issue asks) and an
    absolute term for entries that cancel to ~0.
    """
    if dtype == torch.float16:
        return {"rtol": 4e-3, "atol": 4e-3}
    if dtype == torch.bfloat16:
        return {"rtol": 2e-2, "atol": 2e-2}
    return {"rtol": 1e-5, "atol": 1e-5}

"""Runs the Triton kernels on CPU tensors under the Triton interpreter, in the same pytest process
as the rest of the suite.

Triton chooses interpreter or compiler when a ``@triton.jit`` function is decorated, that is when
``camserve.kernels.triton_cam`` is imported, not when triton itself is imported. So for each test
module here the fixture sets TRITON_INTERPRET=1 and imports that module afresh under it when it is
not already interpreted: it does not matter whether another test imported triton, torch's compiler
or even triton_cam before. Afterwards the variable and the module are put back as they were, so
tests elsewhere see the environment they started with (``test_backend_dispatch`` checks the cases
that need a clean process in subprocesses).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator

import pytest

KERNEL_MODULE = "camserve.kernels.triton_cam"


@pytest.fixture(scope="module", autouse=True)
def triton_interpreter() -> Iterator[None]:
    import camserve.kernels as package

    previous = sys.modules.get(KERNEL_MODULE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        if previous is not None and not previous.INTERPRETED:
            del sys.modules[KERNEL_MODULE]
        module = importlib.import_module(KERNEL_MODULE)
        assert module.INTERPRETED, "Triton did not pick up TRITON_INTERPRET=1"
        yield
    if previous is None:
        sys.modules.pop(KERNEL_MODULE, None)
        if "triton_cam" in vars(package):
            delattr(package, "triton_cam")
    else:
        sys.modules[KERNEL_MODULE] = previous
        package.triton_cam = previous

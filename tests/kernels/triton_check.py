"""Run the Triton kernels under the interpreter on CPU tensors against float64 references.

Invoked by test_triton.py in a subprocess with TRITON_INTERPRET=1 (it must be set before triton is
imported, so it cannot leak into other tests). Exits non-zero with a message on the first mismatch.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from kernel_cases import SMALL_CASES, dense_fm, random_csr, sddmm_reference  # noqa: E402

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
from sparsetrain.kernels import triton_ops  # noqa: E402

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


def check(name: str, got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


def main() -> None:
    n_checks = 0
    for dtype in (torch.float32, torch.bfloat16):
        for index_dtype in (torch.int32, torch.int64):
            for seed, (case, R) in enumerate(zip(SMALL_CASES, (1, 3, 5, 1, 17, 3))):
                m = random_csr(*case, seed=seed, index_dtype=index_dtype, dtype=dtype)
                dense = m.dense()  # float64 of the (rounded) values the kernel sees
                x = dense_fm(m.shape[1], R, seed=10 + seed, dtype=dtype)
                gy = dense_fm(m.shape[0], R, seed=20 + seed, dtype=dtype)
                label = f"{dtype} {index_dtype} {case} R={R}"
                check(f"spmm {label}", triton_ops.spmm(m.crow, m.col, m.values, x, m.shape[1]), dense @ x.double(),
                      dtype)
                check(f"spmm_t {label}", triton_ops.spmm(m.ccol, m.row_t, m.values[m.perm_t.long()], gy, m.shape[0]),
                      dense.t() @ gy.double(), dtype)
                expected = sddmm_reference(m, gy, x)
                check(f"sddmm {label}", triton_ops.sddmm(m.crow, m.col, gy, x), expected, dtype)
                check(f"sddmm_coo {label}", triton_ops.sddmm_coo(m.row, m.col, gy, x), expected, dtype)
                n_checks += 4
    # several entry blocks per SpMM row and several R blocks per SDDMM entry, float32
    m = random_csr(3, 70, 150, None, None, seed=99, dtype=torch.float32)
    x, gy = dense_fm(70, 130, seed=98, dtype=torch.float32), dense_fm(3, 130, seed=97, dtype=torch.float32)
    check("spmm multi-block", triton_ops.spmm(m.crow, m.col, m.values, x, 70), m.dense() @ x.double(), torch.float32)
    check("sddmm multi-block", triton_ops.sddmm(m.crow, m.col, gy, x), sddmm_reference(m, gy, x), torch.float32)
    check_layer_step()
    print(f"triton interpreter: {n_checks + 5} checks passed")


def check_layer_step() -> None:
    """A SparseLinear forward and backward with every kernel call served by triton_ops (as for CUDA
    tensors), against the same step on the CPU backend: the autograd path the GPU will take."""
    import sparsetrain.kernels as kernels
    from sparsetrain.nn import SparseLinear

    layer = SparseLinear(40, 30, sparsity=0.8, bias=True, generator=torch.Generator().manual_seed(0))
    x = torch.randn(7, 40, generator=torch.Generator().manual_seed(1), requires_grad=True)

    def step() -> list[torch.Tensor]:
        layer.zero_grad()
        x.grad = None
        y = layer(x)
        (y * torch.arange(30.0)).sum().backward()
        return [y.detach().clone(), x.grad.clone(), layer.layout.values.grad.clone()]

    expected = step()
    chosen, served = kernels.implementation, []

    def triton_for_all(device: torch.device, dtype: torch.dtype):
        served.append(dtype)
        return triton_ops

    kernels.implementation = triton_for_all
    try:
        got = step()
    finally:
        kernels.implementation = chosen
    assert len(served) >= 3, f"the step made {len(served)} kernel calls through the dispatcher, expected >= 3"
    for name, g, e in zip(("output", "input grad", "value grad"), got, expected):
        check(f"layer step {name}", g, e.double(), torch.float32)


if __name__ == "__main__":
    main()

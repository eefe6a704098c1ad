"""DESIGN rule 1: a compressed layer trains where a dense weight could never exist.

A 2^20 × 2^20 SparseLinear (dense: 4 TiB in float32) with about 2^22 active weights runs forward, backward
and an SGD step in a fresh process, in float32 and in bfloat16 mixed precision (CPU autocast: our bfloat16
kernels); its peak resident memory must stay within a few GiB. The float32 runs store the values in row
blocks (backward on storage positions; forward through the slots, or in storage order with the layout's
storage walk), the bfloat16 one in CSR order.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, resource, sys, torch
    import sparsetrain as st
    torch.set_num_threads(2)
    n = 1 << 20
    layer = st.SparseLinear(n, n, nnz=1 << 22, bias=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(4, n)
    values = layer.layout.parameter
    before = values.detach().clone()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=sys.argv[1] == "bfloat16"):
        y = layer(x)
    loss = y.float().square().sum()
    loss.backward()
    grad_nonzero = int((values.grad != 0).sum())
    opt.step()
    changed = int((values.detach() != before).sum())
    print(json.dumps(dict(nnz=layer.nnz, blocked=layer.layout.blocked, walk=layer.layout.storage_walk() is not None, out=list(y.shape), dtype=str(y.dtype)[6:], grad_nonzero=grad_nonzero, changed=changed,
                          peak_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                          finite=bool(torch.isfinite(y).all()))))
""")


@pytest.mark.parametrize("dtype,value_block,walk", [("float32", 1024, "0"), ("float32", 1024, "1"), ("bfloat16", 0, "auto")])
def test_huge_sparse_linear_trains_in_a_few_gib(dtype, value_block, walk):
    """Row blocks with the forward through the slots or in storage order (forced), and CSR order."""
    env = {**os.environ, "SPARSETRAIN_CPU_VALUE_BLOCK": str(value_block), "SPARSETRAIN_CPU_STORAGE_WALK": walk}
    out = subprocess.run([sys.executable, "-c", SCRIPT, dtype], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["nnz"] == 1 << 22 and result["dtype"] == dtype and result["blocked"] == bool(value_block)
    assert result["walk"] == (walk == "1")
    assert result["out"] == [4, 1 << 20] and result["finite"]
    assert result["grad_nonzero"] > 0.9 * (1 << 22)  # a gradient for (nearly) every active weight
    assert result["changed"] > 0.9 * (1 << 22)
    assert result["peak_gib"] < 3.0, result

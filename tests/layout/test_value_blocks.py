"""Row-block value storage (CompressedLayout value_block > 0): the parameter's order changes, nothing else.

Its invariants: ``transpose_blocked``'s slots are a permutation that keeps every block of rows in its own
CSR range, ordered inside by (column, row), and agree between its two C++ constructions and the torch
formulation; a blocked layer computes bitwise the same outputs and gradients as a CSR-ordered one (every
backward path, both backends, float32, bfloat16 and CPU autocast, linear and conv, our forward in storage
order or the CSR walk through the slots); training with a dynamic
method (pruning ties included) follows bitwise the same trajectory; checkpoints hold slot order and resume
into the same storage; bad settings are refused.
"""
from __future__ import annotations

import copy

import pytest
import torch

from sparsetrain import kernels, methods, rng
from sparsetrain.errors import ConfigError
from sparsetrain.kernels import backend, cpp_ext
from sparsetrain.layout import CompressedLayout, random_linear_indices
from sparsetrain.nn import SparseConv2d, SparseLinear, sparse_layers

BACKENDS = ["cpp", "torch"]
OPTIMIZERS = {"adam": lambda p: torch.optim.Adam(p, lr=1e-2),
              "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4)}


def _csr(n_rows=37, n_cols=23, nnz=300, seed=0, dtype=torch.int32):
    lin = random_linear_indices((n_rows, n_cols), nnz, torch.Generator().manual_seed(seed))
    rows, cols = (lin // n_cols).to(dtype), (lin % n_cols).to(dtype)
    crow = kernels.rows_to_crow(rows, n_rows)
    crow[5:9] = crow[5]  # a few empty rows (the later rows keep their entries)
    return CompressedLayout((n_rows, n_cols), lin).crow.to(dtype), cols, rows


@pytest.mark.parametrize("block_rows", [1, 3, 8, 64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_transpose_blocked_is_a_blockwise_column_major_permutation(monkeypatch, block_rows, index_dtype):
    crow, col, row = _csr(dtype=index_dtype)
    results = {}
    for name, method in [("cpp", "columns"), ("cpp", "walk"), ("cpp", "auto"), ("torch", "auto")]:
        monkeypatch.setenv(backend.ENV_VAR, name)
        csr_perm, ccol_plain, _ = kernels.transpose_csr(crow, col, 23)
        perm, ccol, row_t, slots = kernels.transpose_blocked(crow, col, 23, block_rows, method)
        results[name, method] = (perm, ccol, row_t, slots)
        nnz = col.numel()
        assert torch.equal(ccol, ccol_plain) and slots.dtype == index_dtype
        assert torch.equal(torch.sort(slots.long()).values, torch.arange(nnz))  # a permutation
        assert torch.equal(perm, slots[csr_perm.long()])                        # perm_t in storage positions
        # every block keeps its CSR range; inside it the storage order is (column, row)
        block = row.long() // block_rows
        starts = crow.long()[torch.clamp(block * block_rows, max=crow.numel() - 1)]
        ends = crow.long()[torch.clamp((block + 1) * block_rows, max=crow.numel() - 1)]
        assert bool(((slots >= starts) & (slots < ends)).all())
        order = torch.argsort(slots.long())
        key = block[order] * (23 * 64) + col.long()[order] * 64 + row.long()[order] % 64
        assert bool((key[1:] > key[:-1]).all())
    first = next(iter(results.values()))
    for other in results.values():
        assert all(torch.equal(a, b) for a, b in zip(first, other))


def test_transpose_blocked_of_a_wide_layer(monkeypatch):
    """More columns than the one-pass transpose takes (two passes), both ways to build the slots, both backends."""
    n_rows, n_cols = 64, 40_000
    lin = torch.sort(torch.randperm(n_rows * n_cols, generator=torch.Generator().manual_seed(5))[:3000]).values
    crow = kernels.rows_to_crow(lin // n_cols, n_rows).to(torch.int32)
    col = (lin % n_cols).to(torch.int32)
    results = []
    for name, method in [("cpp", "columns"), ("cpp", "walk"), ("torch", "auto")]:
        monkeypatch.setenv(backend.ENV_VAR, name)
        results.append(kernels.transpose_blocked(crow, col, n_cols, 8, method))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("method", ["columns", "walk"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_transpose_after_merge_remaps_and_carries(monkeypatch, method, index_dtype):
    """remap[slots[p]] = old_slots[source[p]] (-1 where grown), every payload gathered through it; both
    backends, both ways to build the slots, against transpose_blocked and plain indexing."""
    g = torch.Generator().manual_seed(4)
    old_crow, old_col, _ = _csr(dtype=index_dtype)
    n_old = old_col.numel()
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    old_slots = kernels.transpose_blocked(old_crow, old_col, 23, 3, method)[3]
    drop = torch.sort(torch.randperm(n_old, generator=g)[:9]).values
    lin = kernels.csr_rows(old_crow).long() * 23 + old_col.long()
    free = torch.tensor(sorted(set(range(37 * 23)) - set(lin.tolist())))
    new_lin = torch.sort(free[torch.randperm(free.numel(), generator=g)[:7]]).values
    crow, col, source, _, _ = kernels.merge_entries(old_crow, old_col, drop, new_lin, 23)
    payloads = [torch.randn(n_old, generator=g), torch.randn(n_old, generator=g, dtype=torch.float64),
                torch.randn(n_old, generator=g).to(torch.bfloat16), torch.rand(n_old, generator=g) < 0.5]
    results = []
    for name in BACKENDS:
        monkeypatch.setenv(backend.ENV_VAR, name)
        out = kernels.transpose_after_merge(crow, col, 23, 3, source, old_slots, payloads, method)
        assert all(torch.equal(a, b) for a, b in zip(out[:4], kernels.transpose_blocked(crow, col, 23, 3, method)))
        results.append(out)
    for a, b in zip(results[0][:5], results[1][:5]):
        assert torch.equal(a, b)
    _, _, _, slots, remap, carried = results[0]
    expected = torch.full((col.numel(),), -1, dtype=index_dtype)
    kept = source >= 0
    expected[slots[kept].long()] = old_slots[source[kept].long()]
    assert torch.equal(remap, expected) and int((remap < 0).sum()) == 7
    for t, c_cpp, c_torch in zip(payloads, carried, results[1][5], strict=True):
        want = torch.zeros(col.numel(), dtype=t.dtype)
        want[remap >= 0] = t[remap[remap >= 0].long()]
        assert c_cpp.dtype == t.dtype and torch.equal(c_cpp, want) and torch.equal(c_torch, want)
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    assert kernels.transpose_after_merge(crow, col, 23, 3, source, old_slots)[5] == []
    none = torch.empty(0, dtype=index_dtype)  # every entry grown from an empty layer
    *_, remap, (zeros,) = kernels.transpose_after_merge(crow, col, 23, 3, torch.full_like(col, -1), none,
                                                        [torch.empty(0)], method)
    assert bool((remap == -1).all()) and torch.equal(zeros, torch.zeros(col.numel()))
    with pytest.raises(ValueError, match=rf"payloads must be 1-D with one element per old entry \({n_old}\)"):
        kernels.transpose_after_merge(crow, col, 23, 3, source, old_slots, [torch.zeros(3)])
    with pytest.raises(ValueError, match=rf"source and old_slots must lie below {n_old - 1}"):
        kernels.transpose_after_merge(crow, col, 23, 3, source, old_slots[:-1])


@pytest.mark.parametrize("name", BACKENDS)
def test_scatter_permuted_inverts_the_gather(monkeypatch, name):
    monkeypatch.setenv(backend.ENV_VAR, name)
    index = torch.randperm(50, generator=torch.Generator().manual_seed(2)).to(torch.int32)
    src = torch.randn(50)
    assert torch.equal(kernels.scatter_permuted(src, index)[index.long()], src)
    with pytest.raises(ValueError, match="src must be 1-D of index's length"):
        kernels.scatter_permuted(src[:10], index)


def test_scatter_permuted_rejects_an_index_out_of_range():
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        kernels.scatter_permuted(torch.ones(3), torch.tensor([0, 1, 3], dtype=torch.int32))


def _pair(factory, value_block, monkeypatch):
    """The same layer twice, CSR-ordered and row-blocked."""
    made = []
    for vb in (0, value_block):
        monkeypatch.setenv("SPARSETRAIN_CPU_VALUE_BLOCK", str(vb))
        made.append(factory(rng.generator(0, 5)))
    assert not made[0].layout.blocked and made[1].layout.blocked
    assert not torch.equal(made[0].layout.values, made[1].layout.values)  # the parameters differ in order...
    assert torch.equal(made[0].values, made[1].values)                      # ...the slot-ordered values do not
    return made


def _step(layer, x, needs_input_grad, dtype):
    layer = layer.to(dtype)
    x = x.detach().to(dtype).requires_grad_(needs_input_grad)
    y = layer(x)
    y.float().square().sum().backward()
    return y, x.grad, layer.layout.slot_values(layer.layout.values.grad)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("path", ["fused", "values_only", "input_only"])
@pytest.mark.parametrize("walk", ["0", "1"], ids=["csr_walk", "storage_walk"])
def test_blocked_layer_computes_bitwise_the_same(monkeypatch, name, dtype, path, walk):
    plain, blocked = _pair(lambda g: SparseLinear(70, 45, sparsity=0.8, bias=False, generator=g), 4, monkeypatch)
    monkeypatch.setenv(backend.ENV_VAR, name)
    monkeypatch.setenv("SPARSETRAIN_CPU_STORAGE_WALK", walk)  # the forward in storage order (ours), or not
    x = torch.randn(33, 70, generator=torch.Generator().manual_seed(3))
    outs = []
    for layer in (plain, blocked):
        layer.layout.values.requires_grad_(path != "input_only")
        if path == "input_only":
            layer = layer.to(dtype)
            xg = x.to(dtype).requires_grad_(True)
            layer(xg).float().square().sum().backward()
            outs.append((xg.grad,))
        else:
            outs.append(_step(layer, x, path == "fused", dtype))
    for a, b in zip(*outs):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))


@pytest.mark.parametrize("walk", ["0", "1"], ids=["csr_walk", "storage_walk"])
def test_blocked_conv_computes_bitwise_the_same(monkeypatch, walk):
    monkeypatch.setenv("SPARSETRAIN_CPU_STORAGE_WALK", walk)
    plain, blocked = _pair(lambda g: SparseConv2d(3, 8, 3, padding=1, sparsity=0.5, generator=g), 2, monkeypatch)
    x = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(4))
    outs = [_step(layer, x, True, torch.float32) for layer in (plain, blocked)]
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    assert torch.equal(plain.dense_weight(), blocked.dense_weight())


def _model(g):
    return torch.nn.Sequential(SparseLinear(24, 40, sparsity=0.7, generator=g), torch.nn.Tanh(),
                               SparseLinear(40, 10, sparsity=0.6, generator=g))


@pytest.mark.parametrize("method,hp", [("gse", {}), ("gse", {"scope": "global"}), ("set", {"set_prune": "sign_split"}),
                                       ("rigl", {})])
@pytest.mark.parametrize("walk", ["0", "1"], ids=["csr_walk", "storage_walk"])
def test_training_follows_the_same_trajectory(monkeypatch, method, hp, walk):
    """Every update (ties among the zero-valued grown weights included) picks the same slots."""
    monkeypatch.setenv("SPARSETRAIN_CPU_STORAGE_WALK", walk)
    results = []
    for vb in (0, 3):
        monkeypatch.setenv("SPARSETRAIN_CPU_VALUE_BLOCK", str(vb))
        model = _model(rng.generator(0, 9))
        opt = OPTIMIZERS["adam"](model.parameters())
        m = methods.create(method, model, opt, total_steps=8, seed=1, delta_t=2, t_end=1.0, alpha=0.5, **hp)
        g = torch.Generator().manual_seed(7)
        for _ in range(8):
            x, target = torch.randn(16, 24, generator=g), torch.randn(16, 10, generator=g)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), target).backward()
            opt.step()
            m.step()
        layers = list(sparse_layers(model).values())
        assert all(layer.layout.blocked == bool(vb) for layer in layers)
        results.append([(layer.layout.linear_indices(), layer.values.detach(),
                         *[layer.layout.slot_values(opt.state[layer.layout.parameter][k]) for k in ("exp_avg", "exp_avg_sq")])
                        for layer in layers])
    for a, b in zip(*results):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)


def test_checkpoint_holds_slot_order_and_resumes_into_the_same_storage(monkeypatch):
    monkeypatch.setenv("SPARSETRAIN_CPU_VALUE_BLOCK", "2")
    model = _model(rng.generator(0, 9))
    opt = OPTIMIZERS["sgd_momentum"](model.parameters())
    method = methods.create("gse", model, opt, total_steps=6, seed=1, delta_t=2, t_end=1.0, alpha=0.5)
    g = torch.Generator().manual_seed(7)
    data = [(torch.randn(8, 24, generator=g), torch.randn(8, 10, generator=g)) for _ in range(6)]

    def train(model, opt, method, steps):
        for x, target in steps:
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), target).backward()
            opt.step()
            method.step()

    train(model, opt, method, data[:3])
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), method.state_dict()))
    first = model[0].layout
    assert torch.equal(saved[0]["0.layout.values"], first.slot_values())
    assert int(saved[0]["0.layout.value_block"]) == 2
    train(model, opt, method, data[3:])

    monkeypatch.setenv("SPARSETRAIN_CPU_VALUE_BLOCK", "0")  # the checkpoint's storage wins over the setting
    resumed = _model(rng.generator(1, 1))
    resumed.load_state_dict(saved[0])
    assert resumed[0].layout.blocked and torch.equal(resumed[0].values, saved[0]["0.layout.values"])
    ropt = OPTIMIZERS["sgd_momentum"](resumed.parameters())
    ropt.load_state_dict(saved[1])
    rmethod = methods.create("gse", resumed, ropt, total_steps=6, seed=1, delta_t=2, t_end=1.0, alpha=0.5)
    rmethod.load_state_dict(saved[2])
    train(resumed, ropt, rmethod, data[3:])
    for a, b in zip(sparse_layers(model).values(), sparse_layers(resumed).values()):
        assert torch.equal(a.layout.linear_indices(), b.layout.linear_indices())
        assert torch.equal(a.layout.parameter, b.layout.parameter)


def test_a_checkpoint_without_value_block_loads_as_csr_order():
    layer = SparseLinear(12, 9, sparsity=0.5, generator=rng.generator(0, 1))
    state = layer.state_dict()
    del state["layout.value_block"]
    other = SparseLinear(12, 9, sparsity=0.5, generator=rng.generator(0, 2))
    other.load_state_dict(state)
    assert not other.layout.blocked and torch.equal(other.values, layer.values)


def test_bad_settings_are_refused(monkeypatch):
    monkeypatch.setenv("SPARSETRAIN_CPU_VALUE_BLOCK", "many")
    with pytest.raises(ConfigError, match=r"SPARSETRAIN_CPU_VALUE_BLOCK='many': allowed are 'auto' or a number"):
        SparseLinear(8, 8, sparsity=0.5)
    lin = random_linear_indices((4, 4), 5)
    with pytest.raises(ValueError, match=r"value_block must be an int >= 0 .* got -1"):
        CompressedLayout((4, 4), lin, value_block=-1)
    monkeypatch.setenv("SPARSETRAIN_CPU_VALUE_BLOCK", "0")
    crow, col, _ = _csr()
    with pytest.raises(ValueError, match="block_rows must be an int >= 1, got 0"):
        kernels.transpose_blocked(crow, col, 23, 0)
    with pytest.raises(ValueError, match="method must be 'auto', 'columns' or 'walk', got 'fast'"):
        kernels.transpose_blocked(crow, col, 23, 4, "fast")
    with pytest.raises(ValueError, match=r"col has entries outside \[0, n_cols=5\)"):
        kernels.transpose_blocked(crow, col, 5, 4, "columns")


def test_auto_blocks_from_an_eighth_of_l3(monkeypatch):
    """The rule on the 32 MiB L3 it was tuned on (the machine's own L3 would move every threshold)."""
    monkeypatch.setenv("SPARSETRAIN_CPU_VALUE_BLOCK", "auto")
    monkeypatch.setattr(cpp_ext, "L3_BYTES", 32 << 20)
    nnz = cpp_ext.L3_BYTES // 8 // 4  # float32 values filling an eighth of L3
    rows = nnz // 64                   # fan-in 64: blocks of VALUE_BLOCK_BYTES / 256 B rows
    wide = 1 << 20  # columns enough that a block of 1024 rows uses a gathered row less than twice
    assert cpp_ext.value_block_rows(rows, wide, nnz, torch.float32) == cpp_ext.VALUE_BLOCK_BYTES // 256
    assert cpp_ext.value_block_rows(rows, wide, nnz - 1, torch.float32) == 0
    assert cpp_ext.value_block_rows(10, wide, nnz, torch.float32) == 1  # rows longer than a block: one row per block
    # a layer whose blocks walk their storage order gets blocks 4x larger, at most 2048 rows
    assert cpp_ext.value_block_rows(16384, 16384, 5368709, torch.float32) == 800  # 98 %: 200 rows x 4
    assert cpp_ext.value_block_rows(16384, 16384, 1342177, torch.float32) == 2048  # 99.5 %: 809 x 4, capped
    assert cpp_ext.value_block_rows(16384, 16384, 5368709, torch.bfloat16) == 400  # bfloat16 does not walk
    monkeypatch.setenv("SPARSETRAIN_CPU_STORAGE_WALK", "0")  # the block size follows the default policy only
    assert cpp_ext.value_block_rows(16384, 16384, 5368709, torch.float32) == 800
    assert CompressedLayout((4, 4), random_linear_indices((4, 4), 5)).value_block.item() == 0


@pytest.mark.parametrize("walk", ["auto", "1"])
def test_blocked_layer_under_cpu_bfloat16_autocast(monkeypatch, walk):
    """Mixed precision: the float32 parameter in row blocks, a bfloat16 copy of it in the kernels."""
    monkeypatch.setenv("SPARSETRAIN_CPU_STORAGE_WALK", walk)
    plain, blocked = _pair(lambda g: SparseLinear(64, 48, sparsity=0.75, generator=g), 8, monkeypatch)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(6))
    outs = []
    for layer in (plain, blocked):
        xg = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(xg)
        y.float().square().sum().backward()
        assert y.dtype == torch.bfloat16 and layer.layout.values.grad.dtype == torch.float32
        outs.append((y, xg.grad, layer.layout.slot_values(layer.layout.values.grad)))
    for a, b in zip(*outs):
        assert torch.equal(a, b)

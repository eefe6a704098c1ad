"""The layout protocol: replace() semantics and the optimizer-state remap, for both storages."""
import pytest
import torch

from sparsetrain.layout import CompressedLayout, MaskedLayout, random_linear_indices


def _layouts(shape=(6, 9), nnz=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = random_linear_indices(shape, nnz, g)
    comp = CompressedLayout(shape, lin, torch.randn(nnz, generator=g))
    masked = MaskedLayout.from_linear_indices(shape, lin)
    with torch.no_grad():
        masked.weight.view(-1)[lin] = comp.values
    return comp, masked


@pytest.mark.parametrize("nnz", [0, 1, 13, 27, 53, 54])
def test_random_positions_exact_and_unique(nnz):
    lin = random_linear_indices((6, 9), nnz, torch.Generator().manual_seed(1))
    assert lin.numel() == nnz
    assert bool((lin[1:] > lin[:-1]).all()) and (nnz == 0 or (0 <= lin[0] and lin[-1] < 54))


def test_random_positions_reject_too_many():
    with pytest.raises(ValueError, match=r"nnz must be in \[0, 54\]"):
        random_linear_indices((6, 9), 55)


def test_protocol_agrees_between_storages():
    comp, masked = _layouts()
    assert comp.nnz == masked.nnz == 20
    assert torch.equal(comp.coordinates(), masked.coordinates())
    assert torch.equal(comp.values.detach(), masked.values)
    assert torch.equal(comp.to_dense(), masked.to_dense())
    (crow_c, col_c), (crow_m, col_m) = comp.active_csr(), masked.active_csr()
    assert torch.equal(crow_c.long(), crow_m) and torch.equal(col_c.long(), col_m)


def test_transposed_index_is_consistent():
    comp, _ = _layouts((40, 30), 300)
    dense = comp.to_dense()
    n_in = comp.shape[1]
    for c in range(n_in):
        start, end = int(comp.ccol[c]), int(comp.ccol[c + 1])
        rows = comp.row_t[start:end].long()
        slots = comp.perm_t[start:end].long()
        assert torch.equal(comp.col[slots].long(), torch.full_like(rows, c))
        assert bool((rows[1:] > rows[:-1]).all())
        torch.testing.assert_close(comp.values.detach()[slots], dense[rows, c])


@pytest.mark.parametrize("kind", ["compressed", "masked"])
def test_replace_semantics_and_state_remap(kind):
    comp, masked = _layouts()
    layout = comp if kind == "compressed" else masked
    before = layout.to_dense().clone()
    old_coords = layout.coordinates()
    drop = torch.tensor([0, 5, 19])
    inactive = torch.nonzero(before.reshape(-1) == 0).flatten()
    new_lin = inactive[:3]
    new = torch.stack((new_lin // 9, new_lin % 9), 1)
    state = layout.parameter.detach().clone() + 1.0  # a stand-in optimizer buffer, nonzero everywhere
    remap = layout.replace(drop, new)
    state = remap.apply(state)
    after = layout.to_dense()
    assert layout.nnz == 20
    dropped = old_coords[drop]
    assert bool((after[dropped[:, 0], dropped[:, 1]] == 0).all())
    assert bool((after[new[:, 0], new[:, 1]] == 0).all())
    expected = before.clone()
    expected[dropped[:, 0], dropped[:, 1]] = 0
    assert torch.equal(after, expected)
    # grown slots: value 0 and state 0; kept entries keep their state
    grown = remap.grown_slots
    coords = layout.coordinates()
    assert torch.equal(torch.sort(coords[grown][:, 0] * 9 + coords[grown][:, 1]).values, new_lin)
    flat_state = state.reshape(-1) if kind == "compressed" else state.reshape(-1)[layout.linear_indices()]
    assert bool((flat_state[grown] == 0).all())
    kept = torch.ones(20, dtype=torch.bool)
    kept[grown] = False
    torch.testing.assert_close(flat_state[kept], layout.values[kept] + 1.0)
    if kind == "masked":
        assert bool((state.reshape(-1)[dropped[:, 0] * 9 + dropped[:, 1]] == 0).all())
    lin = layout.linear_indices()
    assert bool((lin[1:] > lin[:-1]).all())


@pytest.mark.parametrize("kind", ["compressed", "masked"])
def test_replace_carries_state_like_apply(kind):
    """``carry`` brings optimizer state across in the merge itself; the result equals ``apply``."""
    a, b = (_layouts()[kind == "masked"] for _ in range(2))
    inactive = torch.nonzero(a.to_dense().reshape(-1) == 0).flatten()[:4]
    g = torch.Generator().manual_seed(3)
    state = [torch.randn(a.parameter.shape, generator=g), torch.rand(a.parameter.shape, generator=g).double()]
    carried = a.replace(torch.tensor([2, 3, 17]), inactive, carry=[t.clone() for t in state]).carried
    remap = b.replace(torch.tensor([2, 3, 17]), inactive)
    assert len(carried) == 2
    for got, original in zip(carried, state, strict=True):
        assert got.dtype == original.dtype and torch.equal(got, remap.apply(original.clone()))
    assert torch.equal(a.to_dense(), b.to_dense())
    if kind == "compressed":
        with pytest.raises(ValueError, match="carry tensors must have the shape of the values"):
            a.replace(torch.tensor([0]), torch.empty(0, dtype=torch.int64), carry=[torch.zeros(3)])


@pytest.mark.parametrize("kind", ["compressed", "masked"])
def test_replace_rejects_bad_input(kind):
    comp, masked = _layouts()
    layout = comp if kind == "compressed" else masked
    active = layout.coordinates()
    with pytest.raises(ValueError, match="stay active"):
        layout.replace(torch.tensor([0]), active[1:2])
    with pytest.raises(ValueError, match="duplicate"):
        layout.replace(torch.tensor([0]), torch.tensor([[5, 5], [5, 5]]))
    with pytest.raises(ValueError, match="drop_slots must be in"):
        layout.replace(torch.tensor([20]), torch.empty(0, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        layout.replace(torch.tensor([0]), torch.tensor([[6, 0]]))
    assert layout.nnz == 20


@pytest.mark.parametrize("kind", ["compressed", "masked"])
def test_replace_takes_linear_positions_like_coordinates(kind):
    """Methods pass grown positions as 1-D int64 linear indices; the result equals the (k, 2) form."""
    by_coords, by_linear = (_layouts()[kind == "masked"] for _ in range(2))
    inactive = torch.nonzero(by_coords.to_dense().reshape(-1) == 0).flatten()
    new_lin = inactive[torch.tensor([7, 2, 11])]  # unsorted: the layout sorts
    by_coords.replace(torch.tensor([1, 4]), torch.stack((new_lin // 9, new_lin % 9), 1))
    by_linear.replace(torch.tensor([1, 4]), new_lin)
    assert torch.equal(by_coords.to_dense(), by_linear.to_dense())
    assert torch.equal(by_coords.linear_indices(), by_linear.linear_indices())
    with pytest.raises(ValueError, match=r"new_coordinates must be \(k, 2\) \(row, col\) pairs or 1-D int64"):
        by_linear.replace(torch.tensor([0]), new_lin.int())
    with pytest.raises(ValueError, match="out of range"):
        by_linear.replace(torch.tensor([0]), torch.tensor([54]))


def test_compressed_replace_can_change_nnz_and_keeps_parameter_object():
    comp, _ = _layouts()
    param = comp.values
    inactive = torch.nonzero(comp.to_dense().reshape(-1) == 0).flatten()[:5]
    comp.replace(torch.tensor([1]), torch.stack((inactive // 9, inactive % 9), 1))
    assert comp.nnz == 24 and comp.values is param and param.numel() == 24
    comp.replace(torch.arange(10), torch.empty(0, 2, dtype=torch.long))
    assert comp.nnz == 14 and int(comp.crow[-1]) == 14 and int(comp.ccol[-1]) == 14


def test_regrowing_a_dropped_position_gives_zero():
    comp, _ = _layouts()
    coords = comp.coordinates()
    comp.replace(torch.tensor([3]), coords[3:4])
    assert comp.nnz == 20
    assert comp.to_dense()[coords[3, 0], coords[3, 1]] == 0


def _train_step(layer):
    layer(torch.randn(8, layer.in_features, requires_grad=True)).square().sum().backward()  # needs grad-input


@pytest.mark.parametrize("kernels", ["torch", "cpp"])
def test_transposed_index_is_built_only_when_an_input_gradient_is_needed(monkeypatch, kernels):
    import sparsetrain as st
    from sparsetrain.kernels import backend

    if kernels == "cpp":
        pytest.importorskip("sparsetrain.kernels.cpp_ext")
    monkeypatch.setenv(backend.ENV_VAR, kernels)  # every backend computes grad-input on the transposed CSR
    layer = st.SparseLinear(30, 20, sparsity=0.7)
    base = layer.layout.index_bytes()
    layer(torch.randn(8, 30)).square().sum().backward()  # the first layer: no input gradient, no index
    assert layer.layout._transposed is None
    assert base == 4 * (layer.nnz + 21)  # int32 columns and row pointers
    _train_step(layer)
    assert layer.layout._transposed is not None
    assert layer.layout.index_bytes() == base + 4 * (2 * layer.nnz + 31)  # + row_t, perm_t, column pointers
    inactive = torch.nonzero(layer.layout.to_dense().reshape(-1) == 0).flatten()[:1]
    layer.layout.replace(torch.tensor([0]), torch.stack((inactive // 30, inactive % 30), 1))
    assert layer.layout._transposed is None  # dropped on a topology change, rebuilt on demand


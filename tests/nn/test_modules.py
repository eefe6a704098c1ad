"""SparseLinear / SparseConv2d / Masked* against float64 dense references."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsetrain as st
from sparsetrain.errors import ConfigError


def _dense_linear(layer, x):
    return F.linear(x, layer.dense_weight(), layer.bias)


def _assert_agrees_with_float64(module, x, dense_fn):
    """float32 output, input gradient and active-value gradient of a compressed module against
    ``dense_fn(x64, w64)`` in float64 on its dense weight."""
    y = module(x)
    x64 = x.detach().double().requires_grad_(True)
    w64 = module.dense_weight().double().requires_grad_(True)
    y64 = dense_fn(x64, w64)
    torch.testing.assert_close(y.double(), y64, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(y)
    y.backward(g)
    y64.backward(g.double())
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-4)
    rows, cols = module.coordinates().unbind(1)
    torch.testing.assert_close(module.layout.values.grad.double(), w64.grad.reshape(w64.shape[0], -1)[rows, cols],
                               rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("cls", [st.SparseLinear, st.MaskedLinear])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (33, 5)])
def test_linear_gradcheck_float64(cls, shape):
    n_in, n_out = shape
    layer = cls(n_in, n_out, sparsity=0.6 if n_in * n_out > 1 else 0.0).double()
    x = torch.randn(4, n_in, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    # also the values themselves: gradient of the active entries equals the masked dense gradient
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    w = layer.dense_weight().clone().requires_grad_(True)
    F.linear(x.detach(), w, layer.bias.detach()).backward(g)
    rows, cols = layer.coordinates().unbind(1)
    grad = layer.layout.parameter.grad
    active_grad = grad if layer.is_compressed else grad.reshape(layer.layout.shape)[rows, cols]
    torch.testing.assert_close(active_grad, w.grad[rows, cols], rtol=1e-10, atol=1e-12)


def test_linear_float32_agreement_large():
    layer = st.SparseLinear(768, 512, sparsity=0.9)
    x = torch.randn(64, 768, requires_grad=True)
    _assert_agrees_with_float64(layer, x, lambda x64, w64: F.linear(x64, w64, layer.bias.double()))


def test_linear_accepts_token_inputs():
    layer = st.SparseLinear(16, 8, sparsity=0.5)
    x = torch.randn(2, 5, 16)
    assert layer(x).shape == (2, 5, 8)
    torch.testing.assert_close(layer(x), _dense_linear(layer, x), rtol=1e-5, atol=1e-6)


CONV_CASES = [dict(stride=1, padding=0, dilation=1), dict(stride=2, padding=1, dilation=2),
              dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))]


@pytest.mark.parametrize("cls", [st.SparseConv2d, st.MaskedConv2d])
@pytest.mark.parametrize("geometry", CONV_CASES)
def test_conv_gradcheck_float64(cls, geometry):
    conv = cls(3, 4, 3, sparsity=0.5, **geometry).double()
    x = torch.randn(2, 3, 8, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (x,))
    ref = F.conv2d(x, conv.dense_weight(), conv.bias, conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(conv(x), ref)


@pytest.mark.parametrize("geometry", CONV_CASES)
def test_conv_float32_agreement(geometry):
    conv = st.SparseConv2d(16, 32, 3, sparsity=0.8, **geometry)
    x = torch.randn(8, 16, 17, 15, requires_grad=True)
    _assert_agrees_with_float64(conv, x, lambda x64, w64: F.conv2d(x64, w64, conv.bias.double(), conv.stride,
                                                                    conv.padding, conv.dilation))


def test_sparse_aware_init_bounds():
    layer = st.SparseLinear(100, 50, sparsity=0.9)
    fan_in = layer.layout.fan_in().clamp(min=1).double()
    bound = torch.sqrt(3.0 / fan_in)
    rows = layer.layout.row.long()
    assert bool((layer.values.abs().double() <= bound[rows] + 1e-6).all())
    assert bool((layer.bias.abs().double() <= bound + 1e-6).all())
    assert layer.values.std() > 0


def test_exact_active_count_and_no_duplicates():
    layer = st.SparseLinear(300, 200, sparsity=0.95)
    assert layer.nnz == round(0.05 * 300 * 200)
    lin = layer.layout.linear_indices()
    assert bool((lin[1:] > lin[:-1]).all())
    assert abs(layer.sparsity - 0.95) < 1e-4


@pytest.mark.parametrize("sparse_cls,dense", [(st.SparseLinear, nn.Linear(12, 6)), (st.MaskedLinear, nn.Linear(12, 6)),
                                              (st.SparseConv2d, nn.Conv2d(3, 5, 3, stride=2, padding=1)),
                                              (st.MaskedConv2d, nn.Conv2d(3, 5, 3, padding=1))])
def test_from_dense_to_dense_round_trip(sparse_cls, dense):
    sparse = sparse_cls.from_dense(dense, sparsity=0.5)
    kept = sparse.dense_weight()
    assert sparse.nnz == round(0.5 * dense.weight.numel())
    # the kept entries are the largest magnitudes, with their values
    threshold = kept[kept != 0].abs().min()
    dropped = dense.weight.detach()[kept == 0]
    assert bool((dropped.abs() <= threshold).all())
    torch.testing.assert_close(kept[kept != 0], dense.weight.detach()[kept != 0])
    back = sparse.to_dense()
    assert type(back) is type(dense)
    x = torch.randn(2, 12) if isinstance(dense, nn.Linear) else torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(back(x), sparse(x), rtol=1e-5, atol=1e-6)


def test_from_dense_keeps_all_nonzeros_without_sparsity():
    dense = nn.Linear(10, 4)
    with torch.no_grad():
        dense.weight[:, ::2] = 0
    sparse = st.SparseLinear.from_dense(dense)
    assert sparse.nnz == 20
    torch.testing.assert_close(sparse.dense_weight(), dense.weight.detach())


def test_state_dict_round_trip_with_different_nnz():
    a = st.SparseLinear(20, 10, sparsity=0.5)
    b = st.SparseLinear(20, 10, sparsity=0.9)
    b.load_state_dict(a.state_dict())
    assert b.nnz == a.nnz
    x = torch.randn(3, 20)
    torch.testing.assert_close(a(x), b(x))


def test_state_dict_holds_the_csr_and_loads_the_earlier_row_col_form():
    a = st.SparseLinear(20, 10, sparsity=0.5)
    state = a.state_dict()
    assert {"layout.crow", "layout.col", "layout.values"} <= set(state) and "layout.row" not in state
    legacy = {k: v for k, v in state.items() if k != "layout.crow"}
    legacy["layout.row"] = a.layout.row  # what checkpoints of the (row, col) storage hold
    b = st.SparseLinear(20, 10, sparsity=0.9)
    b.load_state_dict(legacy)
    assert torch.equal(b.layout.crow, a.layout.crow) and torch.equal(b.layout.col, a.layout.col)
    torch.testing.assert_close(b.dense_weight(), a.dense_weight())


def test_load_rejects_a_broken_csr():
    state = st.SparseLinear(20, 10, sparsity=0.5).state_dict()
    bad_pointers = dict(state, **{"layout.crow": state["layout.crow"].flip(0)})
    with pytest.raises(RuntimeError, match="crow must be non-decreasing from 0 to the number of entries"):
        st.SparseLinear(20, 10, sparsity=0.5).load_state_dict(bad_pointers)
    bad_columns = dict(state, **{"layout.col": state["layout.col"].flip(0)})
    with pytest.raises(RuntimeError, match=r"columns must lie in \[0, 20\) and ascend within each row"):
        st.SparseLinear(20, 10, sparsity=0.5).load_state_dict(bad_columns)


# --- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, "high", None])
def test_bad_sparsity(sparsity):
    with pytest.raises(ConfigError, match="sparsity"):
        st.SparseLinear(4, 4, sparsity=sparsity)


def test_too_many_active_weights():
    with pytest.raises(ConfigError, match=r"nnz must be an integer in \[1, 16\]"):
        st.SparseLinear(4, 4, nnz=17)


def test_conv_groups_rejected():
    with pytest.raises(NotImplementedError, match="groups=1"):
        st.SparseConv2d(4, 4, 3, groups=2, sparsity=0.5)
    with pytest.raises(NotImplementedError, match="groups=1"):
        st.SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=2), sparsity=0.5)


def test_from_dense_shape_and_type_mismatch():
    layer = st.SparseLinear(8, 4, sparsity=0.5)
    with pytest.raises(ValueError, match=r"weight must have shape \(4, 8\)"):
        layer.load_dense_(torch.randn(8, 4))
    with pytest.raises(TypeError, match="expects an Linear"):
        st.SparseLinear.from_dense(nn.Conv2d(3, 3, 1))


def test_wrong_input_shape():
    with pytest.raises(ValueError, match="in_features=8"):
        st.SparseLinear(8, 4, sparsity=0.5)(torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        st.SparseConv2d(3, 4, 3, sparsity=0.5)(torch.randn(2, 4, 8, 8))

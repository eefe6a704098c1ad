import json

from torch import nn

import sparsetrain as st
from sparsetrain.accounting import account


def test_account_counts_and_flops():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 20),
                          nn.Linear(20, 4))
    st.sparsify(model, 0.75, distribution="uniform", exclude=["4"])
    acc = account(model, (3, 4, 4))
    conv, fc, last = acc.layers
    assert (conv.kind, fc.kind, last.kind) == ("compressed", "compressed", "dense")
    assert conv.active == model[0].nnz and conv.total == 8 * 27 and conv.positions == 16
    assert conv.forward_flops == 2 * conv.active * 16 and fc.forward_flops == 2 * fc.active
    assert conv.value_bytes == 4 * conv.active and conv.index_bytes == model[0].layout.index_bytes()
    assert last.active == last.total == 80 and last.executed_train_flops == 3 * 2 * 80
    assert acc.totals["active"] == conv.active + fc.active + 80
    assert acc.other_parameters == 8 + 20 + 4
    json.dumps(acc.as_dict())
    table = acc.table()
    assert "compressed" in table and "dense*" in table and "total" in table


def test_masked_layers_report_dense_storage_and_flops():
    model = st.sparsify(nn.Sequential(nn.Linear(10, 10)), 0.9, layout="masked")
    layer = account(model).layers[0]
    assert layer.kind == "masked" and layer.value_bytes == 400 and layer.executed_train_flops == 600
    assert layer.train_flops == 3 * 2 * 10

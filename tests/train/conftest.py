import copy

import pytest

#: A tiny run (MLP on the built-in digits, GSE with global scope so per-layer nnz drifts, frequent
#: topology updates and checkpoints) that takes about a second.
TINY = {
    "name": "tiny",
    "seed": 3,
    "device": "cpu",
    "data": {"name": "digits", "batch_size": 64, "eval_batch_size": 500},
    "model": {"name": "mlp", "options": {"hidden": [48, 32]}},
    "sparse": {"sparsity": 0.8, "distribution": "er"},
    "method": {"name": "gse", "gse": {"delta_t": 3, "t_end": 0.9, "alpha": 0.3, "scope": "global"}},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 0.2},
    "train": {"epochs": 2, "max_steps": 30, "log_every": 4, "checkpoint_every": 5, "eval_every_epochs": 1,
              "progress": False},
}


@pytest.fixture
def tiny_config():
    return copy.deepcopy(TINY)

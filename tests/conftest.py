import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Tests run with the machine's thread budget and a fixed seed."""
    torch.manual_seed(0)
    yield

"""docs/integration.md: the plain-loop example runs as written (so the document cannot rot)."""
from __future__ import annotations

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "integration.md"


def test_integration_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/integration.md has no python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    printed = capsys.readouterr().out
    assert printed.count("grew") == namespace["method"].updates == 4


def test_methods_doc_lists_every_method_and_hyperparameter():
    """docs/methods.md names every registered method and every hyperparameter it accepts."""
    from sparsetrain import methods
    text = (DOC.parent / "methods.md").read_text()
    for name in methods.available():
        assert f"### `{name}`" in text, name
        for key in methods.hyperparameters(name):
            assert f"`{key}`" in text, (name, key)

"""`sparsetrain report` on small runs writes readable PNG plots and a markdown table."""
import copy

import pytest

from sparsetrain.cli import main
from sparsetrain.errors import ConfigError
from sparsetrain.report import load_run, write_report
from sparsetrain.report.plots import update_turnover
from sparsetrain.train import Trainer

_BASE = {
    "seed": 1, "device": "cpu",
    "data": {"name": "digits", "batch_size": 64},
    "model": {"name": "mlp", "options": {"hidden": [40]}},
    "sparse": {"sparsity": 0.7},
    "optim": {"lr": 0.1},
    "train": {"epochs": 2, "log_every": 5, "eval_every_epochs": 0.5, "progress": False},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = []
    for name, method in (("gse-global", {"name": "gse", "gse": {"delta_t": 5, "scope": "global"}}),
                         ("static", {"name": "static"})):
        config = copy.deepcopy(_BASE)
        config.update(name=name, method=method)
        Trainer(config, root / name).fit()
        out.append(root / name)
    return out


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_report_of_two_runs(runs, tmp_path):
    written = write_report(runs, tmp_path / "cmp")
    assert sorted(p.name for p in written) == ["curves.png", "density.png", "table.md", "turnover.png"]
    assert all(_is_png(p) for p in written if p.suffix == ".png")
    table = (tmp_path / "cmp" / "table.md").read_text().splitlines()
    assert table[0].startswith("| run | model | data | method | sparsity % |")
    rows = {line.split("|")[1].strip(): line for line in table[2:4]}
    assert set(rows) == {"gse-global", "static"}
    assert "| gse |" in rows["gse-global"] and "| 70.00 |" in rows["static"]


def test_turnover_comes_from_update_records(runs):
    gse = load_run(runs[0])
    updates = gse.of_kind("update")
    assert updates and all(0 < update_turnover(r) <= 0.2 + 1e-9 for r in updates)
    assert load_run(runs[1]).of_kind("update") == []


def test_cli_report_default_folder(runs, capsys):
    assert main(["report", str(runs[1])]) == 0
    assert (runs[1] / "report" / "curves.png").is_file()
    assert str(runs[1] / "report" / "table.md") in capsys.readouterr().out


def test_not_a_run_folder(tmp_path):
    with pytest.raises(ConfigError, match="has no metrics.jsonl"):
        load_run(tmp_path)

"""Config validation: every bad key or value is a ConfigError naming the dotted key, the value and what is allowed."""
from pathlib import Path

import pytest
import yaml

from sparsetrain.errors import ConfigError
from sparsetrain.train import config as C

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def resolve(*assignments, path=None):
    return C.resolve(path, list(assignments))


def test_demo_defaults_resolve_and_fill_every_key():
    cfg = resolve()
    assert cfg["method"]["name"] == "gse" and cfg["method"]["gse"]["delta_t"] == 200
    assert cfg["optim"]["betas"] == [0.9, 0.999] and cfg["train"]["keep_checkpoints"] == 2
    assert set(cfg) == set(C.SCHEMA)


def test_packaged_demo_equals_configs_demo_yaml():
    assert C.load_yaml(CONFIGS / "demo.yaml") == C.DEMO


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
@pytest.mark.parametrize("method", ["gse", "rigl", "set", "static", "dense"])
def test_every_shipped_config_validates_for_every_method(path, method):
    cfg = resolve(f"method.name={method}", path=path)
    assert cfg["method"]["name"] == method


def test_paper_recipe_matches_gse_md():
    cfg = resolve("sparse.sparsity=0.95", path=CONFIGS / "resnet56_cifar100.yaml")
    o, s, t = cfg["optim"], cfg["schedule"], cfg["train"]
    assert (o["name"], o["lr"], o["momentum"], o["nesterov"], o["weight_decay"]) == ("sgd", 0.1, 0.9, False, 1e-4)
    assert (s["name"], s["warmup_epochs"], s["warmup_start_factor"], s["milestones"], s["gamma"]) == \
        ("multistep", 5.0, 1e-4, [80.0, 120.0], 0.1)
    assert (t["epochs"], cfg["data"]["batch_size"], cfg["sparse"]["distribution"]) == (200.0, 128, "er")
    g = cfg["method"]["gse"]
    assert (g["scope"], g["alpha"], g["delta_t"], g["t_end"], g["gamma"]) == ("global", 0.2, 1000, 0.6, 1.0)
    assert resolve(path=CONFIGS / "vit_cifar10.yaml")["optim"]["lr"] == 0.01


def test_dotted_overrides_parse_yaml_scalars():
    cfg = resolve("optim.lr=1e-3", "model.options.hidden=[64, 32]", "train.max_steps=null", "method.gse.gamma=2",
                  "train.bf16=false", "name=x")
    assert cfg["optim"]["lr"] == 1e-3 and cfg["model"]["options"]["hidden"] == [64, 32]
    assert cfg["train"]["max_steps"] is None and cfg["method"]["gse"]["gamma"] == 2
    assert cfg["train"]["bf16"] is False and cfg["name"] == "x"


@pytest.mark.parametrize("assignment, expected", [
    ("optim.lrr=0.1", r"unknown key 'optim.lrr'.*did you mean 'optim.lr'"),
    ("trian.epochs=1", r"unknown key 'trian'.*did you mean 'train'"),
    ("optim.lr=fast", r"optim.lr must be a number in \(0.0, inf\); got 'fast' \(str\)"),
    ("optim.lr=-0.1", r"optim.lr must be a number in \(0.0, inf\); got -0.1"),
    ("data.batch_size=0", r"data.batch_size must be an integer in \[1, inf\); got 0"),
    ("data.batch_size=12.5", r"data.batch_size must be an integer.*got 12.5 \(float\)"),
    ("sparse.sparsity=1.0", r"sparse.sparsity must be a number in \[0.0, 1.0\); got 1.0"),
    ("optim.name=adamx", r"optim.name must be one of 'sgd', 'adam', 'adamw'; got 'adamx' \(did you mean 'adam'\?\)"),
    ("method.name=gsee", r"method.name must be one of .*'gse'.*got 'gsee'"),
    ("model.name=resnet57", r"model.name must be one of .*got 'resnet57'"),
    ("data.name=mnist", r"data.name must be one of .*got 'mnist'"),
    ("train.bf16=1", r"train.bf16 must be true or false; got 1"),
    ("schedule.milestones=[120, 80]", r"schedule.milestones must be increasing"),
    ("optim.nesterov=true", None),  # fine with momentum 0.9
    ("method.gse.gama=1", r"unknown hyperparameter 'method.gse.gama'.*did you mean 'method.gse.gamma'"),
    ("method.gse.alpha=1.5", r"method.gse: alpha must be in \[0.0, 1.0\], got 1.5"),
    ("method.gse.sampler=best", r"method.gse: .*sampler.*'best'"),
    ("method.foo.alpha=0.1", r"unknown key 'method.foo'"),
    ("model.options.hiden=[8]", r"unknown key 'model.options.hiden'.*did you mean 'model.options.hidden'"),
    ("data.options.nosuch=1", r"unknown key 'data.options.nosuch'"),
    ("data.root=/no/such/folder", r"data.root must be an existing directory; got '/no/such/folder'"),
    ("optim", r"--set expects KEY=VALUE"),
    ("optim.lr.x=1", r"optim.lr is a value, not a section"),
])
def test_bad_values_name_key_value_and_allowed(assignment, expected):
    if expected is None:
        resolve(assignment)
        return
    with pytest.raises(ConfigError, match=expected):
        resolve(assignment)


def test_nesterov_without_momentum_is_refused():
    with pytest.raises(ConfigError, match="optim.nesterov=true needs optim.momentum > 0"):
        resolve("optim.nesterov=true", "optim.momentum=0")


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        C.load_yaml(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        C.load_yaml(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        C.load_yaml(tmp_path / "broken.yaml")
    (tmp_path / "section.yaml").write_text(yaml.safe_dump({"optim": 3}))
    with pytest.raises(ConfigError, match="optim must be a section"):
        C.resolve(tmp_path / "section.yaml")


def test_yaml_exponent_floats():
    assert C.parse_scalar("1e-4") == 1e-4 and C.parse_scalar("5") == 5 and C.parse_scalar("abc") == "abc"

"""Run configuration: schema, defaults, YAML loading, dotted ``--set`` overrides and full validation.

A config is a nested dict. Every key is declared in ``SCHEMA`` with its type, range or allowed choices,
so a wrong key or value fails before any work starts, with a ``ConfigError`` that names the dotted key,
the value and what is allowed (and the closest valid key for a typo).
"""
from __future__ import annotations

import copy
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from ..density import DISTRIBUTIONS
from ..errors import ConfigError
from ..layout import LAYOUTS

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "multistep", "cosine")
DEVICES = ("auto", "cpu", "cuda")
DENSE = "dense"  # method name meaning: no sparsification, no method (a dense baseline)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``; users write ``1e-4``)."""


_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$")
# SafeLoader's own int and float resolvers run first, so this only claims what they leave as strings.
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_scalar(text: str) -> Any:
    """A ``--set`` value parsed as YAML (``0.05`` → float, ``[1, 2]`` → list, ``null`` → None, ``abc`` → str)."""
    if text.strip() == "":
        return ""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file (safe loader: no code runs) and check that it is a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def dump_yaml(config: Mapping) -> str:
    return yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=None)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# --- schema ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """One config value: type ('int', 'float', 'bool', 'str', 'list', 'dict'), default and constraints."""

    kind: str
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    nullable: bool = False
    items: str | None = None  # element kind of a list

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self._choices())
        parts = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                 "list": "a list", "dict": "a mapping"}[self.kind]
        if self.items:
            parts += f" of {self.items}s"
        if self.low is not None or self.high is not None:
            lo = "-inf" if self.low is None else repr(self.low)
            hi = "inf" if self.high is None else repr(self.high)
            parts += f" in {'(' if self.low_open or self.low is None else '['}{lo}, {hi}" \
                     f"{')' if self.high_open or self.high is None else ']'}"
        if self.nullable:
            parts += " or null"
        return parts

    def _choices(self) -> tuple[str, ...]:
        return self.choices() if callable(self.choices) else self.choices  # type: ignore[misc, return-value]

    def check(self, key: str, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{key} must be {self.allowed()}; got null")
        value = _check_kind(key, value, self.kind, self)
        if self.kind == "list" and self.items:
            value = [_check_kind(f"{key}[{i}]", v, self.items, self) for i, v in enumerate(value)]
        if self.choices is not None and value not in self._choices():
            raise ConfigError(f"{key} must be {self.allowed()}; got {value!r}{_suggest(value, self._choices())}")
        for v in (value if self.kind == "list" else [value]):
            if isinstance(v, (int, float)) and not _in_range(v, self):
                raise ConfigError(f"{key} must be {self.allowed()}; got {value!r}")
        return value


def _check_kind(key: str, value: Any, kind: str, field: Field) -> Any:
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "list": isinstance(value, (list, tuple)),
        "dict": isinstance(value, dict),
    }[kind]
    if not ok:
        raise ConfigError(f"{key} must be {field.allowed()}; got {value!r} ({type(value).__name__})")
    if kind == "float":
        value = float(value)
        if math.isnan(value):
            raise ConfigError(f"{key} must be {field.allowed()}; got nan")
    return list(value) if kind == "list" else value


def _in_range(v: float, f: Field) -> bool:
    if f.low is not None and (v < f.low or (f.low_open and v == f.low)):
        return False
    if f.high is not None and (v > f.high or (f.high_open and v == f.high)):
        return False
    return True


def _suggest(word: Any, options, prefix: str = "") -> str:
    """' (did you mean 'optim.lr'?)' for the closest option, or '' when nothing is close."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _dataset_names() -> tuple[str, ...]:
    from ..data import DATASETS
    return tuple(DATASETS)


def _model_names() -> tuple[str, ...]:
    from ..models import MODELS
    return tuple(MODELS)


def method_names() -> tuple[str, ...]:
    """``dense`` (no sparsity) plus every registered sparse-training method."""
    from .. import methods
    return (DENSE, *methods.available())


SCHEMA: dict[str, Any] = {
    "name": Field("str", "run", "run name; the default output folder is runs/<name>-<timestamp>"),
    "seed": Field("int", 0, "seed of data order, initialisation, topology decisions", low=0),
    "device": Field("str", "auto", "cpu, cuda or auto (cuda when available)", choices=DEVICES),
    "data": {
        "name": Field("str", "mnist1d", "dataset name", choices=_dataset_names),
        "root": Field("str", None, "data directory (datasets that read files)", nullable=True),
        "batch_size": Field("int", 128, "training batch size", low=1),
        "eval_batch_size": Field("int", 1000, "evaluation batch size", low=1),
        "drop_last": Field("bool", False, "drop the last incomplete training batch of each epoch"),
        "options": Field("dict", {}, "extra keyword arguments of load_dataset"),
    },
    "model": {
        "name": Field("str", "mlp", "model name", choices=_model_names),
        "width": Field("float", 1.0, "width multiplier", low=0.0, low_open=True),
        "options": Field("dict", {}, "extra keyword arguments of build_model (e.g. hidden: [1024, 1024])"),
    },
    "sparse": {
        "sparsity": Field("float", 0.9, "fraction of zeros over all sparse layers", low=0.0, high=1.0,
                          high_open=True),
        "distribution": Field("str", "er", "per-layer density rule", choices=DISTRIBUTIONS),
        "layout": Field("str", "compressed", "storage of sparse layers", choices=LAYOUTS),
        "exclude": Field("list", [], "layer names or globs that stay dense", items="str"),
        "overrides": Field("dict", {}, "layer name or glob -> fixed sparsity"),
        "dense_grad": Field("bool", False, "masked layers pass the dense gradient (needed by SNFS)"),
    },
    "method": {
        "name": Field("str", "gse", "sparse-training method, or 'dense'", choices=method_names),
        # plus one mapping per method name holding that method's hyperparameters (validated separately)
    },
    "optim": {
        "name": Field("str", "sgd", "optimizer", choices=OPTIMIZERS),
        "lr": Field("float", 0.1, "peak learning rate", low=0.0, low_open=True),
        "momentum": Field("float", 0.9, "SGD momentum", low=0.0, high=1.0, high_open=True),
        "nesterov": Field("bool", False, "SGD Nesterov momentum (needs momentum > 0)"),
        "weight_decay": Field("float", 1e-4, "weight decay (decoupled for adamw)", low=0.0),
        "betas": Field("list", [0.9, 0.999], "Adam/AdamW betas", items="float", low=0.0, high=1.0,
                       high_open=True),
        "eps": Field("float", 1e-8, "Adam/AdamW epsilon", low=0.0, low_open=True),
    },
    "schedule": {
        "name": Field("str", "cosine", "learning-rate schedule after warm-up", choices=SCHEDULES),
        "warmup_epochs": Field("float", 0.0, "linear warm-up length in epochs", low=0.0),
        "warmup_start_factor": Field("float", 1e-4, "warm-up starts at this fraction of lr", low=0.0, high=1.0),
        "milestones": Field("list", [], "multistep: epochs at which lr is multiplied by gamma", items="float",
                            low=0.0),
        "gamma": Field("float", 0.1, "multistep factor", low=0.0, low_open=True),
        "min_lr_factor": Field("float", 0.0, "cosine: final lr as a fraction of lr", low=0.0, high=1.0),
    },
    "train": {
        "epochs": Field("float", 1.0, "training length in epochs", low=0.0, low_open=True),
        "max_steps": Field("int", None, "stop after this many steps (also the schedule length)", low=1,
                           nullable=True),
        "label_smoothing": Field("float", 0.0, "cross-entropy label smoothing", low=0.0, high=1.0,
                                 high_open=True),
        "bf16": Field("bool", False, "bfloat16 autocast (mixed precision: float32 weights; on the CPU our bfloat16 kernels)"),
        "eval_every_epochs": Field("float", 1.0, "evaluate on the test split every this many epochs "
                                   "(0: only at the end)", low=0.0),
        "log_every": Field("int", 50, "write a metrics record every this many steps", low=1),
        "checkpoint_every": Field("int", 0, "checkpoint every this many steps (0: only at the end)", low=0),
        "keep_checkpoints": Field("int", 2, "how many newest checkpoints to keep", low=2),
        "progress": Field("bool", True, "show a tqdm progress bar"),
        "tensorboard": Field("bool", False, "also write TensorBoard events (needs tensorboard installed)"),
    },
    "forgetting": {
        "remove_n": Field("int", None, "remove this many training examples with the fewest forgetting events "
                          "(null: off)", low=1, nullable=True),
        "remove_at": Field("float", 70 / 160, "remove at the start of epoch round(remove_at * train.epochs)",
                           low=0.0, high=1.0, low_open=True, high_open=True),
        "keep_lowest_n": Field("int", 0, "keep this many lowest-count examples, remove the next remove_n", low=0),
    },
}


def defaults(schema: Mapping[str, Any] = SCHEMA) -> dict:
    """The full default config."""
    return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


def merge(base: Mapping, update: Mapping) -> dict:
    """Recursive merge: mappings merge key by key, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(config: dict, assignments: list[str]) -> dict:
    """Apply ``key.sub=value`` strings; values are parsed as YAML scalars."""
    config = copy.deepcopy(config)
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. optim.lr=0.05), got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(f"--set key {key!r} is not a dotted key like optim.lr")
        node = config
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[:depth + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = parse_scalar(text)
    return config


def validate(config: Mapping) -> dict:
    """Check every key and value against ``SCHEMA``; return the complete config with defaults filled in."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"a config must be a mapping, got {type(config).__name__}")
    extra = {k: v for k, v in config.get("method", {}).items() if k != "name"} \
        if isinstance(config.get("method"), Mapping) else {}
    trimmed = merge(config, {})
    if extra:
        trimmed["method"] = {k: v for k, v in config["method"].items() if k == "name"}
    out = _validate_section(trimmed, SCHEMA, "")
    out["method"].update(_validate_method_sections(extra))
    _check_consistency(out)
    check_method_values(out)
    return out


def _validate_section(given: Mapping, schema: Mapping[str, Any], prefix: str) -> dict:
    out: dict[str, Any] = {}
    for key in given:
        if key not in schema:
            where = f"section {prefix[:-1]!r}" if prefix else "the config"
            raise ConfigError(f"unknown key {prefix + key!r} in {where}{_suggest(key, schema, prefix)}; "
                              f"allowed keys: {', '.join(schema)}")
    for key, spec in schema.items():
        dotted = prefix + key
        if isinstance(spec, dict):
            value = given.get(key, {})
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted} must be a section (mapping) with keys {', '.join(spec)}; got {value!r}")
            out[key] = _validate_section(value, spec, dotted + ".")
        else:
            out[key] = spec.check(dotted, given[key]) if key in given else copy.deepcopy(spec.default)
    return out


def _validate_method_sections(sections: Mapping[str, Any]) -> dict:
    """``method.<m>`` holds method m's hyperparameters; every section is checked against its method."""
    if not sections:
        return {}
    from .. import methods
    known = tuple(methods.available())
    out = {}
    for method, params in sections.items():
        if method not in known:
            raise ConfigError(f"unknown key 'method.{method}': besides 'name', section 'method' holds one "
                              f"mapping of hyperparameters per method, one of {', '.join(map(repr, known))}"
                              f"{_suggest(method, (*known, 'name'), 'method.')}")
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"method.{method} must be a mapping of hyperparameters; got {params!r}")
        out[method] = dict(params)
        allowed = methods.hyperparameters(method)
        for key in params:
            dotted = f"method.{method}.{key}"
            if key not in allowed:
                raise ConfigError(f"unknown hyperparameter {dotted!r}{_suggest(key, allowed, f'method.{method}.')}; {method} takes "
                                  f"{', '.join(allowed) or 'no hyperparameters'}")
    return out


def check_method_values(config: Mapping) -> None:
    """Let the method check its hyperparameter values now (before any data is read) by binding it to a tiny
    stand-in model with the configured layout; its ConfigError is re-raised naming ``method.<name>``."""
    name = config["method"]["name"]
    if name == DENSE:
        return
    import torch
    from torch import nn

    from .. import methods
    from ..nn import sparsify

    s = config["sparse"]
    model = sparsify(nn.Sequential(nn.Linear(8, 8)), 0.5, distribution="uniform", layout=s["layout"],
                     dense_grad=s["dense_grad"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hp = with_run_facts(name, method_hyperparameters(config), steps_per_epoch=1)
    try:
        methods.create(name, model, optimizer, total_steps=1000, seed=config["seed"], **hp)
    except ConfigError as exc:
        raise ConfigError(f"method.{name}: {exc}") from None


def with_run_facts(name: str, hyperparameters: Mapping, *, steps_per_epoch: int) -> dict:
    """Add what only the trainer knows (``steps_per_epoch``) when the method takes it and the user left it."""
    from .. import methods

    hp = dict(hyperparameters)
    if "steps_per_epoch" in methods.hyperparameters(name) and hp.get("steps_per_epoch") is None:
        hp["steps_per_epoch"] = steps_per_epoch
    return hp


def _check_consistency(config: Mapping) -> None:
    """Constraints that involve more than one key."""
    optim, sched, sparse = config["optim"], config["schedule"], config["sparse"]
    if optim["name"] == "sgd" and optim["nesterov"] and optim["momentum"] == 0:
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0; got optim.momentum=0.0")
    if len(optim["betas"]) != 2:
        raise ConfigError(f"optim.betas must be a list of two numbers in [0, 1); got {optim['betas']!r}")
    if list(sched["milestones"]) != sorted(sched["milestones"]):
        raise ConfigError(f"schedule.milestones must be increasing; got {sched['milestones']!r}")
    for key, value in sparse["overrides"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(f"sparse.overrides.{key} must be a sparsity in [0, 1); got {value!r}")
    from ..data import dataset_options
    from ..models import model_options

    if config["train"]["tensorboard"]:
        import importlib.util
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("train.tensorboard=true needs the tensorboard package, which is not installed "
                              "(pip install tensorboard); or set train.tensorboard=false")

    _check_options("data.options", config["data"]["options"], list(dataset_options(config["data"]["name"])))
    _check_options("model.options", config["model"]["options"], list(model_options(config["model"]["name"])))
    root = config["data"]["root"]
    if root is not None and not Path(root).expanduser().is_dir():
        raise ConfigError(f"data.root must be an existing directory; got {root!r} (not found)")
    if config["forgetting"]["remove_n"] is not None:
        from .removal import removal_epoch
        removal_epoch(config)


def _check_options(field: str, given: Mapping, allowed: Sequence[str] | None) -> None:
    """Keys of a free-form options mapping checked against what the receiving function accepts."""
    if allowed is None:
        return
    for key in given:
        if key not in allowed:
            raise ConfigError(f"unknown key {field + '.' + key!r}{_suggest(key, allowed, field + '.')}; allowed: "
                              f"{', '.join(allowed) or 'none'}")


def method_hyperparameters(config: Mapping) -> dict:
    """The hyperparameters the chosen method receives: its own section (defaults fill the rest)."""
    name = config["method"]["name"]
    return dict(config["method"].get(name, {}) or {})


def flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'optim.lr': 0.1, ...}: for tables and TensorBoard hparams."""
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --- the embedded demo ------------------------------------------------------------------------------
DEMO: dict = {
    "name": "demo",
    "seed": 0,
    "device": "auto",
    "data": {"name": "mnist1d", "batch_size": 64, "eval_batch_size": 1000},
    "model": {"name": "mlp", "options": {"hidden": [2048, 2048]}},
    "sparse": {"sparsity": 0.9, "distribution": "er", "layout": "compressed"},
    "method": {"name": "gse", "gse": {"alpha": 0.2, "delta_t": 200, "t_end": 0.75}},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 2.0},
    "train": {"epochs": 120.0, "log_every": 50, "checkpoint_every": 2000, "eval_every_epochs": 10.0},
}


def resolve(config_path: str | Path | None = None, assignments: list[str] | None = None) -> dict:
    """Defaults ← (config file or the embedded demo) ← ``--set`` overrides, validated."""
    base = DEMO if config_path is None else load_yaml(config_path)
    config = apply_overrides(base, list(assignments or []))
    return validate(config)

"""Per-model hyper-parameter overrides from a TOML/YAML file and from ``--set model.key=value``.

Layers, later wins: the model's ``Config`` defaults (the paper's), then the file, then
``--set``. A file holds one table per model::

    [multvae]            # hparams.toml          multvae:          # hparams.yaml
    epochs = 50                                    epochs: 50
    dims = [600, 200]                              dims: [600, 200]

A ``[tune]`` table (``trainer.tune``: ``budget = "10m"``, ``trials``, ``enabled``) turns the
hyper-parameter search on; it is not a model (``read_tune_section``).

A model or key that does not exist is an error naming the known ones, never a silently
ignored setting. Values are typed like the default they replace (an int field refuses
0.5, a float field takes 1 as 1.0, a tuple field takes a list).
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from errors import UserError
from models.base import ModelInputError, build_config

Overrides = dict[str, dict[str, Any]]  # model name -> {field: value}


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML would read it (1e-3, true, [600, 200], "text"); bare words stay strings."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def parse_set_options(items: Iterable[str]) -> Overrides:
    out: Overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        model, dot, field = key.strip().partition(".")
        if not sep or not dot or not model or not field:
            raise UserError(f"--set {item!r}: expected model.key=value, e.g. --set multvae.epochs=50")
        out.setdefault(model, {})[field] = parse_value(value.strip())
    return out


def read_config_file(path: str | Path) -> Overrides:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read hyper-parameter file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise UserError(f"hyper-parameter file {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"hyper-parameter file {path} is not valid: {first_line}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UserError(f"hyper-parameter file {path} must map each model name to a table of keys")
    return {str(model): dict(values) for model, values in data.items()}


# a field a size rule fills (default None, ``models.sizes``) is checked as the type it is declared with
_TYPE_OF_RULE_FIELD = {"float | None": 0.0, "int | None": 0}


def _coerce(model: str, field: dataclasses.Field, value: Any) -> Any:
    default = field.default
    where = f"{model}.{field.name}"
    if default is None:
        default = _TYPE_OF_RULE_FIELD.get(str(field.type), None)
    if default is dataclasses.MISSING or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise UserError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list like {list(default)}, got {value!r}")
        return tuple(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise UserError(f"{where} must be a string, got {value!r}")
    return value


def read_tune_section(config_file: str | Path) -> dict[str, Any] | None:
    """The config file's ``[tune]`` table, None when it has none."""
    from trainer.tune import TUNE_KEY

    return read_config_file(config_file).get(TUNE_KEY)


def validate(overrides: Mapping[str, Mapping[str, Any]], configs: Mapping[str, type]) -> Overrides:
    """Check every model and key against the models' ``Config`` dataclasses; return typed values."""
    out: Overrides = {}
    for model, values in overrides.items():
        if model not in configs:
            raise UserError(f"hyper-parameters given for unknown model {model!r}; known models: {', '.join(configs)}")
        fields = {f.name: f for f in dataclasses.fields(configs[model])}
        for key, value in values.items():
            if key not in fields:
                raise UserError(f"unknown hyper-parameter {model}.{key}; {model} has: {', '.join(fields)}")
            out.setdefault(model, {})[key] = _coerce(model, fields[key], value)
        try:  # the Config's own checks (a known dtype, a positive rate...) before any model trains
            build_config(configs[model], out.get(model, {}))
        except (ModelInputError, TypeError, ValueError) as exc:
            raise UserError(f"hyper-parameters of {model}: {exc}") from None
    return out


def resolve(config_file: str | Path | None, set_options: Iterable[str], configs: Mapping[str, type]) -> Overrides:
    """File then ``--set`` (later wins), validated against ``configs`` (model name -> Config class)."""
    merged: Overrides = {}
    from trainer.tune import TUNE_KEY

    file_layer = {k: v for k, v in read_config_file(config_file).items() if k != TUNE_KEY} if config_file else None
    layers = ([file_layer] if file_layer is not None else []) + [parse_set_options(set_options)]
    for layer in layers:
        for model, values in layer.items():
            merged.setdefault(model, {}).update(values)
    return validate(merged, configs)

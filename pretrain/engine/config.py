"""Pretraining configuration: the schema's defaults <- YAML file(s) <- ``key=value`` overrides (OmegaConf).

The schema (:mod:`pretrain.engine.schema`) gives every key its type, default and allowed values. A YAML file may
start with ``_base_: path.yaml`` (or a list), relative to that file, merged first. An unknown key is an error naming
it and the closest valid key; a value of the wrong type is an error naming its key and where it came from. The
values are checked once, when the config is built; the lr scaling rule then fills ``optim.lr`` from
``optim.base_lr`` and the total batch.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..data.multicrop import check_blur_prob
from .schema import Config, check_value, fields_of


class ConfigError(ValueError):
    pass


def _flat_keys(cfg, prefix="") -> list[str]:
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=False)  # no resolution: '???' (mandatory) values are fine here
    keys = []
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        keys.append(path)
        if isinstance(v, dict):
            keys += _flat_keys(v, path + ".")
    return keys


def _check_keys(candidate: DictConfig, valid: set[str], source: str) -> None:
    for key in _flat_keys(candidate):
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{key}' in {source}{hint}")


def _load_yaml_with_bases(path: Path, seen=()) -> DictConfig:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"_base_ cycle through {path}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    cfg = OmegaConf.load(path)
    bases = cfg.pop("_base_", None)
    if bases is None:
        return cfg
    merged = OmegaConf.create()
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = OmegaConf.merge(merged, _load_yaml_with_bases(path.parent / base, seen + (path,)))
    return OmegaConf.merge(merged, cfg)


def _merge(cfg: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    """``cfg`` with ``layer`` merged in; a value the schema's type refuses is a :class:`ConfigError`."""
    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        reason = str(e).splitlines()[0]
        raise ConfigError(f"{key} in {source}: {reason}") from None


def _layers(config_files, overrides):
    """``(source name, config layer)`` of every file, then of every override."""
    for f in [config_files] if isinstance(config_files, (str, os.PathLike)) else config_files:
        yield str(f), _load_yaml_with_bases(Path(f))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        yield "command line", OmegaConf.from_dotlist([item])


def load_config(config_files=(), overrides=(), world_size: int = 1) -> DictConfig:
    """Build the run configuration. ``config_files``: YAML paths (merged in order); ``overrides``: ``a.b=v``."""
    cfg = OmegaConf.structured(Config)
    valid = set(_flat_keys(cfg))
    for source, layer in _layers(config_files, overrides):
        _check_keys(layer, valid, source)
        cfg = _merge(cfg, layer, source)
    validate(cfg)
    apply_scaling_rules(cfg, world_size)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Every value against the schema's choices and ranges, then the rules that tie keys together."""
    from ..methods import METHODS  # the methods import the engine's schedules: import them when validating

    if cfg.method not in METHODS:
        raise ConfigError(f"method must be one of {sorted(METHODS)}, got {cfg.method!r}")
    for key, f in fields_of():
        parent, _, leaf = key.rpartition(".")
        if OmegaConf.is_missing(OmegaConf.select(cfg, parent) if parent else cfg, leaf):
            raise ConfigError(f"{key} must be set ({f.metadata['doc']})")
        problem = check_value(key, OmegaConf.select(cfg, key), f.metadata)
        if problem:
            raise ConfigError(problem)
    try:
        check_blur_prob(list(cfg.crops.blur_prob), "crops.blur_prob")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for key in ("masking.ratio", "crops.global_scale", "crops.local_scale"):
        lo, hi = OmegaConf.select(cfg, key)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"{key} must satisfy 0 <= lo <= hi <= 1, got {[lo, hi]}")
    for key in ("optim.warmup_epochs", "teacher.warmup_temp_epochs", "optim.freeze_last_layer_epochs"):
        if OmegaConf.select(cfg, key) > cfg.optim.epochs:
            raise ConfigError(f"{key} ({OmegaConf.select(cfg, key):g}) must be <= optim.epochs ({cfg.optim.epochs:g})")
    if cfg.crops.global_size % cfg.model.patch_size or cfg.crops.local_size % cfg.model.patch_size:
        raise ConfigError("crops.global_size and crops.local_size must be multiples of model.patch_size")
    if cfg.crops.photometric_on == "device" and cfg.method != "intertwined":
        raise ConfigError(f"crops.photometric_on=device is implemented for method intertwined, not {cfg.method}")
    if cfg.crops.get("resize_backend", "pil") == "torch" and cfg.crops.photometric_on != "device":
        raise ConfigError("crops.resize_backend=torch needs crops.photometric_on=device (the worker path is PIL's)")
    if not cfg.pos_field.enabled and cfg.pos_field.get("kind", "field") != "field":
        raise ConfigError(
            f"pos_field.kind={cfg.pos_field.kind} needs pos_field.enabled=true (the crop-tied coordinates)"
        )


def apply_scaling_rules(cfg: DictConfig, world_size: int) -> None:
    total = int(cfg.train.batch_size_per_gpu) * world_size
    rule = cfg.optim.lr_scaling
    factor = {"sqrt_wrt_1024": math.sqrt(total / 1024), "linear_wrt_256": total / 256, "none": 1.0}[rule]
    cfg.optim.lr = float(cfg.optim.base_lr) * factor


def config_hash(cfg: DictConfig) -> str:
    """Short hash of the resolved config (recorded in exported backbones)."""
    text = OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def to_container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg

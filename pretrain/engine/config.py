"""Pretraining configuration: package defaults <- YAML file(s) <- ``key=value`` overrides (OmegaConf).

A YAML file may start with ``_base_: path.yaml`` (or a list), relative to that file, merged first.
Any key not present in the defaults is an error naming it and the closest valid key. The lr scaling rule
fills ``optim.lr`` from ``optim.base_lr`` and the total batch.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..data.multicrop import check_blur_prob

DEFAULTS = Path(__file__).with_name("default_config.yaml")


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


def load_config(config_files=(), overrides=(), world_size: int = 1) -> DictConfig:
    """Build the run configuration. ``config_files``: YAML paths (merged in order); ``overrides``: ``a.b=v``."""
    cfg = OmegaConf.load(DEFAULTS)
    valid = set(_flat_keys(cfg)) | {"optim.lr"}
    for f in [config_files] if isinstance(config_files, (str, os.PathLike)) else config_files:
        layer = _load_yaml_with_bases(Path(f))
        _check_keys(layer, valid, str(f))
        cfg = OmegaConf.merge(cfg, layer)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        layer = OmegaConf.from_dotlist([item])
        _check_keys(layer, valid, "command line")
        cfg = OmegaConf.merge(cfg, layer)
    validate(cfg)
    apply_scaling_rules(cfg, world_size)
    return cfg


def validate(cfg: DictConfig) -> None:
    def choice(key, options):
        value = OmegaConf.select(cfg, key)
        if value not in options:
            raise ConfigError(f"{key} must be one of {options}, got {value!r}")

    choice("pos_field.scale_dist", ["beta", "uniform", "const", "none"])
    choice("pos_field.enclose", ["all", "global"])
    choice("pos_field.init", ["trunc_normal", "sincos"])
    choice("masking.content_shape", ["box", "cross"])
    choice("masking.pos_shape", ["box", "cross"])
    choice("loss.targets", ["sinkhorn_knopp", "centering"])
    choice("loss.koleo_scope", ["global", "local"])
    choice("optim.lr_scaling", ["sqrt_wrt_1024", "linear_wrt_256", "none"])
    choice("train.precision", ["auto", "bf16", "fp32"])
    choice("model.pos_embed_interpolation", ["dinov2", "size"])
    choice("heads.last_layer_init", ["pytorch_default", "trunc_normal"])
    choice("heads.last_layer_gain", ["learned", "fixed"])
    choice("optim.clip_grad_scope", ["per_module", "joint"])
    choice("optim.decay_tokens_and_positions", [True, False])
    try:
        check_blur_prob(list(cfg.crops.blur_prob), "crops.blur_prob")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if int(cfg.train.epoch_length) < 0:
        raise ConfigError(f"train.epoch_length must be >= 0 (0 = one pass over the data), got {cfg.train.epoch_length}")
    lo, hi = cfg.masking.ratio
    if not 0.0 <= lo <= hi <= 1.0:
        raise ConfigError(f"masking.ratio must satisfy 0 <= lo <= hi <= 1, got {list(cfg.masking.ratio)}")
    for key in ("masking.mask_probability", "masking.content_fraction"):
        if not 0.0 <= float(OmegaConf.select(cfg, key)) <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1]")
    if cfg.crops.global_size % cfg.model.patch_size or cfg.crops.local_size % cfg.model.patch_size:
        raise ConfigError("crops.global_size and crops.local_size must be multiples of model.patch_size")
    if cfg.crops.n_global != 2:
        raise ConfigError("crops.n_global must be 2 (the DINO loss pairs the two global crops)")


def apply_scaling_rules(cfg: DictConfig, world_size: int) -> None:
    total = int(cfg.train.batch_size_per_gpu) * world_size
    rule = cfg.optim.lr_scaling
    factor = {"sqrt_wrt_1024": math.sqrt(total / 1024), "linear_wrt_256": total / 256, "none": 1.0}[rule]
    cfg.optim.lr = float(cfg.optim.base_lr) * factor


def config_hash(cfg: DictConfig) -> str:
    """Short hash of the resolved config (recorded in exported backbones)."""
    text = OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def effective_epochs(cfg: DictConfig) -> float:
    """iBOT's effective epochs: epochs x (n_global + n_local x (local/global)^2)."""
    c = cfg.crops
    return float(cfg.optim.epochs) * (c.n_global + c.n_local * (c.local_size / c.global_size) ** 2)


def to_container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg

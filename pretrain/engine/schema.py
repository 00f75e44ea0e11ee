"""The pretraining configuration schema: every key with its type, default, choices or range, and what it means.

One dataclass per section; :func:`pretrain.engine.config.load_config` builds ``OmegaConf.structured(Config)``, so
OmegaConf enforces the types on every merge (``train.log_every=abc`` is refused when the config is built), and
:func:`check_values` checks the choices and ranges declared here, once. Defaults are the paper's ViT-S/16 recipe
(its Table 6); ``docs/config.md`` lists every key (written from this module by ``python -m pretrain.engine.schema``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any  # noqa: UP035 - OmegaConf's structured configs read Optional[...], not X | None

from omegaconf import MISSING


def opt(default, doc: str, choices: tuple | None = None, minimum: float | None = None, maximum: float | None = None):
    """A config field: its default, its documentation, and the choices or the inclusive range of its values."""
    meta = {"doc": doc, "choices": choices, "minimum": minimum, "maximum": maximum}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    arch: str = opt(
        "vit_small", "backbone size", ("vit_pico", "vit_nano", "vit_tiny", "vit_small", "vit_base", "vit_large")
    )
    patch_size: int = opt(16, "patch size in pixels", minimum=1)
    drop_path_rate: float = opt(0.1, "stochastic depth, linear over depth from 0 to this rate", minimum=0, maximum=1)
    drop_path_uniform: bool = opt(False, "the same drop-path rate in every block")
    layerscale: float = opt(1.0e-5, "LayerScale initial value; 0 disables LayerScale", minimum=0)
    num_register_tokens: int = opt(0, "register tokens", minimum=0)
    qkv_bias: bool = opt(True, "bias in the attention's qkv projection")
    pos_embed_interpolation: str = opt(
        "dinov2",
        "with the field off: how pos_embed is resized to another grid; dinov2 = bicubic by scale factor "
        "(n + 0.1) / M as DINOv2's code, size = bicubic to the target size",
        ("dinov2", "size"),
    )
    init_from: str = opt(
        "",
        "continued pretraining: a checkpoint tools/convert_ckpt.py reads (ours, DINOv2, DINOv3, timm, MAE...) that "
        "student and teacher backbones start from (patch kernel resampled, the field from its pos_embed); heads "
        "start fresh; empty = random init",
    )


@dataclass
class PosFieldConfig:
    enabled: bool = opt(True, "the learnable position field; false = a learned pos_embed (DINOv2, no sampling)")
    size: list[int] = opt([50, 50], "field size in patches (rows, columns); paper Table 4b")
    init: str = opt("trunc_normal", "field initialisation", ("trunc_normal", "sincos"))
    scale_dist: str = opt(
        "beta",
        "distribution of the virtual-image scale (Table 4a); none = image = virtual image",
        ("beta", "uniform", "const", "none"),
    )
    s_min: float = opt(0.2, "smallest scale", minimum=0)
    s_max: float = opt(1.0, "largest scale", minimum=0)
    beta: list[float] = opt([2.0, 5.0], "Beta(a, b) of the scale")
    enclose: str = opt("all", "which crops the translation must keep inside the virtual image", ("all", "global"))
    kind: str = opt(
        "field",
        "what the crop-tied positions feed (docs/positions.md): field = the learnable field sampled at the crop; "
        "crop_sincos = fixed 2-D sin-cos at the crop-tied coordinates; crop_rope = continuous 2-D RoPE at them "
        "(size = the virtual image's extent in coordinate units)",
        ("field", "crop_sincos", "crop_rope"),
    )
    rope_base: float = opt(10000.0, "kind crop_rope: RoPE base of the frequencies", minimum=1e-6)
    rope_rule: str = opt(
        "axial",
        "kind crop_rope: frequency rule, axial = base^(-t/(D/4)) per axis | cr2pq_printed = base^(-t/(D/2)) | "
        "dinov3 = 2 pi / base^(2t/(D/2))",
        ("axial", "cr2pq_printed", "dinov3"),
    )


@dataclass
class MaskingConfig:
    mask_probability: float = opt(1.0, "share of global crops masked at all (DINOv2: 0.5)", minimum=0, maximum=1)
    content_fraction: float = opt(
        0.5, "among masked crops, the share with content masking; the rest get position masking", minimum=0, maximum=1
    )
    ratio: list[float] = opt([0.1, 0.5], "range of the masked share of patches, stratified over the batch")
    content_shape: str = opt("box", "content mask shape", ("box", "cross"))
    pos_shape: str = opt("cross", "position mask shape (Table 5a)", ("cross", "box"))


@dataclass
class HeadsConfig:
    n_prototypes: int = opt(65536, "prototypes K of every head", minimum=2)
    bottleneck_dim: int = opt(256, "bottleneck width", minimum=1)
    hidden_dim: int = opt(2048, "MLP width", minimum=1)
    nlayers: int = opt(3, "MLP layers", minimum=1)
    ibot_separate: bool = opt(True, "a separate iBOT head (the position head is always separate)")
    last_layer_init: str = opt(
        "pytorch_default",
        "last layer init: pytorch_default = nn.Linear's, drawn after the MLP's (DINOv2's code) | trunc_normal",
        ("pytorch_default", "trunc_normal"),
    )
    last_layer_gain: str = opt(
        "fixed",
        "weight-normalised last layer's gain: fixed = 1 (paper Table 6, iBOT) | learned (DINOv2's code)",
        ("fixed", "learned"),
    )


@dataclass
class LossConfig:
    dino_weight: float = opt(1.0, "weight of the DINO CLS loss", minimum=0)
    ibot_weight: float = opt(1.0, "weight of the masked-content loss", minimum=0)
    pos_weight: float = opt(1.0, "weight of the masked-position loss", minimum=0)
    koleo_weight: float = opt(1.0, "weight of KoLeo (paper: 1; DINOv2: 0.1)", minimum=0)
    koleo_scope: str = opt(
        "local",
        "KoLeo's neighbours: local = per process (DINOv2's code) | global = over all processes",
        ("local", "global"),
    )
    student_temp: float = opt(0.1, "student softmax temperature", minimum=1e-6)
    targets: str = opt("sinkhorn_knopp", "teacher targets", ("sinkhorn_knopp", "centering"))
    sk_iterations: int = opt(3, "Sinkhorn-Knopp iterations", minimum=1)
    center_momentum: float = opt(0.9, "centering momentum (targets=centering)", minimum=0, maximum=1)


@dataclass
class TeacherConfig:
    temp: float = opt(0.04, "teacher temperature after warm-up", minimum=1e-6)
    warmup_temp: float = opt(0.04, "teacher temperature at the start of its warm-up", minimum=1e-6)
    warmup_temp_epochs: float = opt(0, "teacher temperature warm-up, epochs", minimum=0)
    momentum: float = opt(0.992, "EMA momentum at the start (cosine to final_momentum)", minimum=0, maximum=1)
    final_momentum: float = opt(1.0, "EMA momentum at the end", minimum=0, maximum=1)


@dataclass
class CropsConfig:
    global_size: int = opt(224, "global crop size in pixels (a multiple of model.patch_size)", minimum=1)
    local_size: int = opt(96, "local crop size in pixels (a multiple of model.patch_size)", minimum=1)
    n_global: int = opt(2, "global crops (the DINO loss pairs two)", minimum=2, maximum=2)
    n_local: int = opt(8, "local crops", minimum=0)
    global_scale: list[float] = opt([0.32, 1.0], "RandomResizedCrop area range of global crops")
    local_scale: list[float] = opt([0.05, 0.32], "RandomResizedCrop area range of local crops")
    photometric: bool = opt(True, "colour jitter, grayscale, blur and solarisation")
    grayscale_prob: float = opt(0.2, "grayscale probability (DINOv2)", minimum=0, maximum=1)
    blur_prob: list[float] = opt(
        [0.0, 0.9, 0.5], "blur probability of global crop 1, global crop 2, local crops (DINOv2's code)"
    )
    photometric_on: str = opt(
        "worker",
        "where colour jitter, grayscale, blur and solarisation run: worker = PIL in the data-loader workers; device = "
        "batched on the training device after the uint8 crops arrive, parameters drawn per crop in the workers (same "
        "distributions; method intertwined)",
        ("worker", "device"),
    )
    reduced_decode: bool = opt(
        True,
        "photometric_on=device: decode a JPEG at 1/2, 1/4 or 1/8 size when all its crops are downscaled that much "
        "(same boxes; pixels differ slightly, docs/fidelity.md)",
    )
    resize_backend: str = opt(
        "pil",
        "photometric_on=device: the workers' crop-and-resize; pil = PIL's bicubic (the reference), torch = torch's "
        "uint8 antialiased bicubic (same boxes, pixels within one level of PIL's, several times faster per core)",
        ("pil", "torch"),
    )


@dataclass
class OptimConfig:
    epochs: float = opt(100, "training epochs (see train.epoch_length)", minimum=1e-9)
    base_lr: float = opt(2.0e-3, "learning rate before the scaling rule", minimum=0)
    lr_scaling: str = opt("sqrt_wrt_1024", "lr scaling by total batch", ("sqrt_wrt_1024", "linear_wrt_256", "none"))
    lr: float | None = opt(None, "filled from base_lr by the scaling rule (a value given here is replaced)")
    warmup_epochs: float = opt(10, "linear lr warm-up, epochs", minimum=0)
    min_lr: float = opt(1.0e-6, "final lr of the cosine schedule", minimum=0)
    weight_decay: float = opt(0.04, "weight decay at the start (cosine to weight_decay_end)", minimum=0)
    weight_decay_end: float = opt(0.4, "weight decay at the end", minimum=0)
    clip_grad: float = opt(3.0, "gradient-norm threshold; 0 = no clipping", minimum=0)
    clip_grad_scope: str = opt(
        "per_module",
        "per_module = backbone and each head alone (DINOv2's code) | joint = one norm",
        ("per_module", "joint"),
    )
    decay_tokens_and_positions: bool = opt(
        True, "true: only biases, norms, LayerScale exempt from decay (DINOv2's code); false: also tokens and positions"
    )
    freeze_last_layer_epochs: float = opt(1, "epochs with the heads' last layers frozen", minimum=0)
    betas: list[float] = opt([0.9, 0.999], "AdamW betas")


@dataclass
class DropPosConfig:
    """``method: droppos`` only (docs/droppos.md): the official code's defaults but target_norm and target_grid."""

    mask_ratio: float = opt(
        0.75,
        "gamma: share of patches removed before the encoder; int(N * (1 - gamma)) stay visible",
        minimum=0,
        maximum=0.99,
    )
    pos_mask_ratio: float = opt(
        0.75,
        "gamma_pos: share of the visible patches whose position is dropped; int(V * (1 - gamma_pos)) keep it",
        minimum=0,
        maximum=1,
    )
    mask_token_type: str = opt(
        "param",
        "what replaces a dropped position: param = the learned [POSMASK] token; zeros; wrong_pos = the position "
        "of another dropped patch of the image",
        ("param", "zeros", "wrong_pos"),
    )
    pos_embed: str = opt(
        "sincos",
        "encoder positions: sincos = MAE's fixed 2-D sin-cos; sincos_learnable = initialised so, learned; "
        "learned = our truncated-normal init, learned (paper Table S1)",
        ("sincos", "sincos_learnable", "learned"),
    )
    init: str = opt(
        "mae",
        "weights: mae = xavier-uniform linears, std-0.02 tokens (official); ours = the ViT's own",
        ("mae", "ours"),
    )
    decoder_depth: int = opt(2, "position decoder blocks", minimum=1)
    decoder_dim: int = opt(512, "position decoder width", minimum=1)
    decoder_heads: int = opt(16, "position decoder attention heads", minimum=1)
    sigma: float = opt(1.0, "position smoothing sigma at the start (0 = one-hot targets)", minimum=0)
    sigma_end: float = opt(0.0, "sigma at the end of the decay", minimum=0)
    sigma_decay: str = opt(
        "epoch",
        "sigma from sigma to sigma_end: epoch = linear, updated once per epoch (official); iteration = every "
        "iteration (paper Eq. 7); none = constant sigma",
        ("epoch", "iteration", "none"),
    )
    target_norm: str = opt(
        "rows",
        "smoothed targets: rows = each row divided by its sum; official_broadcast = w / w.sum(-1) as the official "
        "code (entry (i, j) divided by row sum j)",
        ("rows", "official_broadcast"),
    )
    target_grid: str = opt(
        "patches",
        "distances of the smoothing: patches = on the patch grid; official_square = the official code's "
        "(crop // grid)^2 square map, indexed by the flat patch index and cut to N x N",
        ("patches", "official_square"),
    )
    attentive: bool = opt(True, "attentive reconstruction: weight each dropped patch by its CLS affinity")
    tau: float = opt(0.1, "temperature of the CLS-patch cosine softmax", minimum=1e-6)


@dataclass
class CR2PQConfig:
    """``method: cr2pq`` only (docs/cr2pq.md): the paper's choices, ours where it is silent."""

    teacher: str = opt(
        "timm",
        "the frozen teacher: timm = a timm CNN (cr2pq.teacher_name, e.g. the paper's DINO ResNet-50); checkpoint = "
        "any checkpoint the converter reads (ours, DINOv2, timm, MAE, iBOT, DINO)",
        ("timm", "checkpoint"),
    )
    teacher_name: str = opt("resnet50", "teacher=timm: the timm model name")
    teacher_weights: str = opt("", "the teacher's weights file (needed unless cr2pq.teacher_init=random)")
    teacher_init: str = opt(
        "pretrained",
        "pretrained = the weights of cr2pq.teacher_weights; random = teacher=timm at timm's random init, seeded by "
        "cr2pq.teacher_seed (toy runs and tests)",
        ("pretrained", "random"),
    )
    teacher_seed: int = opt(0, "teacher_init=random: the seed of its weights", minimum=0)
    teacher_stage: int = opt(
        0,
        "teacher=timm: 0 = its final feature map (the paper); k = the map of its k-th stage (ResNet: layer k)",
        minimum=0,
    )
    target_norm: str = opt(
        "none",
        "the teacher's patch embeddings in the losses: none = as they are (the paper); layernorm = each standardised "
        "over its channels",
        ("none", "layernorm"),
    )
    loss_p: float = opt(2.0, "p of both losses, sum over channels of abs(z - z')^p (not given in the paper)", minimum=1)
    global_weight: float = opt(0.5, "lambda: weight of the global loss", minimum=0)
    global_tokens: str = opt(
        "queries",
        "what the global loss mean-pools: queries = the cross-attention outputs at view B's patches (Eq. 10's "
        "K_B sums); encoder = view A's encoder patch tokens",
        ("queries", "encoder"),
    )
    projector_hidden_dim: int = opt(2048, "hidden width of the 2-layer global projector", minimum=1)
    decoder_depth: int = opt(2, "transformer blocks of the patch decoder", minimum=1)
    decoder_dim: int = opt(384, "patch decoder width", minimum=1)
    decoder_heads: int = opt(6, "patch decoder attention heads", minimum=1)
    rope_base: float = opt(10000.0, "RoPE base of the encoder and the cross-attention", minimum=1e-6)
    rope_rule: str = opt(
        "axial",
        "RoPE frequencies: axial = base^(-t/(D/4)) per axis (standard axial 2-D RoPE); cr2pq_printed = "
        "base^(-t/(D/2)) as printed in the paper's Eq. 5",
        ("axial", "cr2pq_printed"),
    )
    coord_anchor: str = opt(
        "corner",
        "where a patch of view B sits in view A's frame: corner = its first corner (Listing 1); center = its centre "
        "minus one half",
        ("corner", "center"),
    )
    flip_prob: float = opt(0.5, "horizontal flip probability of each view (BYOL)", minimum=0, maximum=1)
    blur_prob: list[float] = opt([1.0, 0.1], "Gaussian blur probability of view A, view B (BYOL)")
    solarize_prob: list[float] = opt([0.0, 0.2], "solarisation probability of view A, view B (BYOL)")


@dataclass
class TrainConfig:
    data: str = opt(MISSING, "image folder (recursive) or a text file listing image paths")
    output_dir: str = opt("outputs/run", "checkpoints, logs, metrics and backbone.pth")
    batch_size_per_gpu: int = opt(64, "batch per process; total batch = this x processes (paper: 512)", minimum=1)
    epoch_length: int = opt(
        0, "iterations per epoch: 0 = one pass over the data; N = N iterations (DINOv2's code: 1250)", minimum=0
    )
    num_workers: int = opt(8, "data-loader workers per process", minimum=0)
    seed: int = opt(0, "seed of the data order, crops, masks and initialisation", minimum=0)
    precision: str = opt("auto", "auto = bf16 on GPU, fp32 on CPU", ("auto", "bf16", "fp32"))
    checkpoint_every: int = opt(1000, "iterations between checkpoints", minimum=1)
    keep_checkpoints: int = opt(2, "checkpoints kept", minimum=1)
    log_every: int = opt(10, "iterations between log lines", minimum=1)
    max_nonfinite: int = opt(10, "stop after this many non-finite losses in a row", minimum=1)
    max_iterations: int = opt(0, "stop early after this many iterations (0 = full schedule)", minimum=0)
    resume_may_change: list[str] = opt(
        [], "keys that may differ from the checkpoint's config on resume, besides logging and checkpointing ones"
    )


@dataclass
class Config:
    method: str = opt("intertwined", "the pretraining method: a name in pretrain.methods.METHODS")
    model: ModelConfig = field(default_factory=ModelConfig)
    pos_field: PosFieldConfig = field(default_factory=PosFieldConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    crops: CropsConfig = field(default_factory=CropsConfig)
    droppos: DropPosConfig = field(default_factory=DropPosConfig)
    cr2pq: CR2PQConfig = field(default_factory=CR2PQConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def fields_of(cls=Config, prefix: str = ""):
    """``(dotted key, dataclass field)`` of every leaf key, in declaration order."""
    for f in dataclasses.fields(cls):
        if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            yield from fields_of(f.default_factory, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def check_value(key: str, value: Any, meta: dict) -> str | None:
    """What is wrong with ``value`` for ``key`` by the choices or range declared in the schema, or None."""
    choices, lo, hi = meta.get("choices"), meta.get("minimum"), meta.get("maximum")
    if choices is not None and value not in choices:
        return f"{key} must be one of {list(choices)}, got {value!r}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            return f"{key} must be finite, got {value}"
        if lo is not None and value < lo:
            return f"{key} must be >= {lo:g}, got {value}"
        if hi is not None and value > hi:
            return f"{key} must be <= {hi:g}, got {value}"
    return None


def _range_text(lo, hi) -> str:
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f">= {lo:g}"
    if lo is None:
        return f"<= {hi:g}"
    return f"[{lo:g}, {hi:g}]"


def _yaml_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def reference_markdown() -> str:
    """``docs/config.md``: every key, its default and its meaning, as a Markdown table."""
    lines = [
        "# Pretraining configuration reference",
        "",
        "Every key of `pretrain/engine/schema.py`, with its default (the paper's ViT-S/16 recipe) and its choices or",
        "range. Written by `python -m pretrain.engine.schema > docs/config.md`; a test checks that it is current.",
        "",
        "| key | default | values | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for key, f in fields_of():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        default = "required" if default is MISSING else default
        meta = f.metadata
        if meta["choices"]:
            values = " \\| ".join(str(c) for c in meta["choices"])
        else:
            values = _range_text(meta["minimum"], meta["maximum"])
        lines.append(f"| `{key}` | `{_yaml_text(default)}` | {values} | {meta['doc']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())

"""The backbone's :class:`ViTConfig` from a pretraining config (its ``model.*``, ``pos_field.*`` and
``crops.global_size`` keys): one mapping for the training loop and for the converter reading training checkpoints."""

from .vit import ViTConfig


def backbone_config(cfg) -> ViTConfig:
    """ViT hyper-parameters from the pretraining config (``model.*`` and ``pos_field.*``)."""
    m, pf = cfg.model, cfg.pos_field
    return ViTConfig.from_arch(
        m.arch,
        patch_size=int(m.patch_size),
        img_size=int(cfg.crops.global_size),
        drop_path_rate=float(m.drop_path_rate),
        drop_path_uniform=bool(m.drop_path_uniform),
        layerscale=float(m.layerscale) if m.layerscale else None,
        num_register_tokens=int(m.num_register_tokens),
        qkv_bias=bool(m.qkv_bias),
        pos_field_size=[int(s) for s in pf.size],
        pos_field_init=str(pf.init),
        pos_embed_interpolation=str(m.get("pos_embed_interpolation", "size")),  # configs older than the key
        **crop_position_kind(pf),
    )


def crop_position_kind(pf) -> dict:
    """The ``ViTConfig`` position fields for ``pos_field.kind`` (docs/positions.md): the learnable field, fixed
    sin-cos at the crop-tied coordinates, or continuous RoPE at them (``kind`` absent in older configs: field)."""
    kind = str(pf.get("kind", "field")) if pf.enabled else "field"
    if kind == "crop_sincos":
        return dict(pos_field=False, pos_embed_type="crop_sincos")
    if kind == "crop_rope":
        rule = str(pf.get("rope_rule", "axial"))
        return dict(pos_field=False, pos_embed_type="none", rope=True, rope_base=float(pf.rope_base), rope_rule=rule)
    return dict(pos_field=bool(pf.enabled))

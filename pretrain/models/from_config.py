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
        pos_field=bool(pf.enabled),
        pos_field_size=[int(s) for s in pf.size],
        pos_field_init=str(pf.init),
        pos_embed_interpolation=str(m.get("pos_embed_interpolation", "size")),  # configs older than the key
    )

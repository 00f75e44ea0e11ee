from .heads import DINOHead, normalized_linear
from .position_field import PositionField
from .vit import ARCHS, VisionTransformer, ViTConfig, build_vit

__all__ = ["DINOHead", "normalized_linear", "PositionField", "ARCHS", "ViTConfig", "VisionTransformer", "build_vit"]

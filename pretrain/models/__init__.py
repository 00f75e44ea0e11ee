from .heads import DINOHead
from .position_field import PositionField
from .vit import ARCHS, ViTConfig, VisionTransformer, build_vit

__all__ = ["DINOHead", "PositionField", "ARCHS", "ViTConfig", "VisionTransformer", "build_vit"]

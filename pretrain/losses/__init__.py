from .dino import dino_cls_loss, soft_cross_entropy
from .koleo import koleo_loss
from .patch import masked_patch_loss
from .targets import SoftmaxCentering, TeacherTargets, sinkhorn_knopp, sinkhorn_knopp_log

__all__ = [
    "dino_cls_loss",
    "soft_cross_entropy",
    "koleo_loss",
    "masked_patch_loss",
    "SoftmaxCentering",
    "TeacherTargets",
    "sinkhorn_knopp",
    "sinkhorn_knopp_log",
]

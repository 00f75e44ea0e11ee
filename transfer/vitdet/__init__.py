"""COCO transfer: ViTDet Mask R-CNN on a plain ViT without window attention or relative position (detectron2).

Modules (one job each; data flows configs -> train):

* :mod:`transfer.vitdet.backbone`   ``SDPAViT``: detectron2's ``ViT`` with SDPA global attention, activation
  checkpointing and optional CLS / register tokens (same parameter names, so converted keys load as they are).
* :mod:`transfer.vitdet.plain_vit`  the constructor arguments of a plain ViT (global attention, no relative
  position), shared by the configs, the converter's parity check, the benchmark and the tests.
* :mod:`transfer.vitdet.data`       LSJ loader (flip, ResizeScale 0.1-2.0, FixedSizeCrop), COCO / toy-COCO
  registration.
* :mod:`transfer.vitdet.solver`     layer-wise lr decay and the ViTDet step schedule with warm-up.
* :mod:`transfer.vitdet.checkpoint` architecture from a converted checkpoint, strict (loud) key checks.
* :mod:`transfer.vitdet.train`      ``python -m transfer.vitdet.train`` (wrapped by ``tools/train_vitdet.sh``).

Configs live in ``configs/vitdet/`` (LazyConfig). Nothing here is imported eagerly, so ``import transfer.vitdet``
does not need detectron2.
"""

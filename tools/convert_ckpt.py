#!/usr/bin/env python
"""Convert a ViT checkpoint for detectron2 ViTDet, MMSeg Segmenter or timm (the command line of
``transfer.convert.convert_checkpoint``, see ``transfer/convert/api.py``).

Example::

    python tools/convert_ckpt.py --src backbone.pth --dst vitdet_init.pth --target detectron2
    python tools/convert_ckpt.py --src dinov2_vitb14_reg4.pth --dst ade_init.pth --target mmseg --drop-registers
"""

import sys

from transfer.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())

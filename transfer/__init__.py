"""Carrying pretrained ViTs into ViTDet (COCO) and Segmenter (ADE20K); probes."""

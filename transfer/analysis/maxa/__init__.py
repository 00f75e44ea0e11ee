"""MAXA: masked cross-attention adapters on frozen features (the MAXA paper; docs/evaluation.md).

``adapter``: the readout head; ``targets``: instance boundaries, distance transform, instance ids, depth from
COCO-format and ADE-layout sets; ``metrics``: IoU, MSE, adjusted Rand index with k-means; ``run``: extract
frozen features once, train one adapter per task, score it; ``pca``: the PCA-RGB picture of the features.
"""

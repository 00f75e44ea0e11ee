"""ImageNet normalisation (timm's and DINOv2's values), the one definition every package imports."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The same on the 0-255 scale MMSeg's data preprocessor uses (rounded to the digits MMSeg's configs write).
IMAGENET_MEAN_255 = tuple(round(255 * m, 3) for m in IMAGENET_MEAN)
IMAGENET_STD_255 = tuple(round(255 * s, 3) for s in IMAGENET_STD)

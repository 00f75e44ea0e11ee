"""Self-supervised ViT pretraining with a crop-tied position field, and transfer to ViTDet / Segmenter.

The heavy stack (torch, torchvision, mmcv with ops, detectron2) is installed by ``tools/install.sh``
from the pins in ``requirements/pins.env``; ``setup.py`` declares the light dependencies only, so that
``pretrain`` stays importable on a machine that has just torch, torchvision and timm.
"""

from pathlib import Path

from setuptools import find_packages, setup


def read_pins(path=Path(__file__).parent / "requirements" / "pins.env"):
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pins[key] = value.strip("\"'")
    return pins


PINS = read_pins()

setup(
    name="ssl-vit-toolkit",
    version="0.1.0",
    description=__doc__.splitlines()[0],
    packages=find_packages(
        include=["pretrain", "pretrain.*", "transfer", "transfer.*", "toydata", "toydata.*", "resultsdb", "resultsdb.*"]
    ),
    python_requires=">=" + PINS["PYTHON_MIN"],
    install_requires=[
        f"torch=={PINS['TORCH_VERSION']}",
        f"torchvision=={PINS['TORCHVISION_VERSION']}",
        f"timm=={PINS['TIMM_VERSION']}",
        f"omegaconf=={PINS['OMEGACONF_VERSION']}",
        "pycocotools",  # toydata's polygon rasteriser
    ],
    extras_require={
        "transfer": [
            f"mmcv=={PINS['MMCV_VERSION']}",
            f"mmengine=={PINS['MMENGINE_VERSION']}",
            f"mmsegmentation=={PINS['MMSEG_VERSION']}",
            "fvcore",
        ],
    },
)

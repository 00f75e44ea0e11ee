"""One spec of a complete toy-data root (:class:`ToySpec`): what :func:`toydata.make_toy_all` and
:func:`toydata.ensure_toy_data` generate, validated once, and the ``.complete`` marker that records it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from toydata._checks import check_count, check_seed, check_size
from toydata.ade import check_num_classes
from toydata.images import IMAGE_SCENES
from toydata.scenes import ADE_APPEARANCES

#: Bump whenever the output of the generator changes, so that :func:`toydata.ensure_toy_data` regenerates.
GENERATOR_VERSION = 5  # 5: coco/depth/ is part of every set


@dataclass(frozen=True)
class ImagesSpec:
    """The unlabeled pretraining folder ``images/``: ``num`` images of ``size`` (N or (h, w)), ``scenes`` of
    :data:`~toydata.images.IMAGE_SCENES`."""

    num: int = 256
    size: int | tuple[int, int] = (160, 160)
    scenes: str = "texture"

    def validated(self, prefix: str) -> ImagesSpec:
        """A normalised copy (ints, ``(h, w)``); errors name the field as ``<prefix>.<field>``."""
        if self.scenes not in IMAGE_SCENES:
            raise ValueError(f"{prefix}.scenes must be one of {IMAGE_SCENES}, got {self.scenes!r}")
        return ImagesSpec(
            num=check_count(self.num, f"{prefix}.num", minimum=1),
            size=check_size(self.size, f"{prefix}.size"),
            scenes=self.scenes,
        )


@dataclass(frozen=True)
class CocoSpec:
    """The COCO instance set ``coco/``: ``num_train`` / ``num_val`` images of ``size`` (N or (h, w))."""

    num_train: int = 24
    num_val: int = 8
    size: int | tuple[int, int] = (256, 256)

    def validated(self, prefix: str) -> CocoSpec:
        """A normalised copy (ints, ``(h, w)``); errors name the field as ``<prefix>.<field>``."""
        return CocoSpec(
            num_train=check_count(self.num_train, f"{prefix}.num_train"),
            num_val=check_count(self.num_val, f"{prefix}.num_val"),
            size=check_size(self.size, f"{prefix}.size"),
        )


@dataclass(frozen=True)
class AdeSpec:
    """The two ADE20K-layout sets ``ade/`` and ``ade_texture/``: ``num_train`` / ``num_val`` images of ``size``
    (N or (h, w)) with labels ``1..num_classes``."""

    num_train: int = 24
    num_val: int = 8
    size: int | tuple[int, int] = (256, 256)
    num_classes: int = 6

    def validated(self, prefix: str) -> AdeSpec:
        """A normalised copy (ints, ``(h, w)``); errors name the field as ``<prefix>.<field>``."""
        return AdeSpec(
            num_train=check_count(self.num_train, f"{prefix}.num_train"),
            num_val=check_count(self.num_val, f"{prefix}.num_val"),
            size=check_size(self.size, f"{prefix}.size"),
            num_classes=check_num_classes(self.num_classes, f"{prefix}.num_classes", ADE_APPEARANCES),
        )


@dataclass(frozen=True)
class ToySpec:
    """Everything a toy-data root is generated from: the seed and one spec per set.

    Construction validates and normalises every field (counts to ``int``, sizes to ``(h, w)`` tuples) and raises
    ``ValueError`` naming the field (``seed``, ``images.num``, ``coco.size``, ``ade.num_classes``, ...), so a spec
    that exists is one the generator accepts; equal specs generate byte-identical sets.
    """

    seed: int = 0
    images: ImagesSpec = ImagesSpec()
    coco: CocoSpec = CocoSpec()
    ade: AdeSpec = AdeSpec()

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", check_seed(self.seed))
        for name, kind in (("images", ImagesSpec), ("coco", CocoSpec), ("ade", AdeSpec)):
            value = getattr(self, name)
            if not isinstance(value, kind):
                raise TypeError(f"{name} must be a {kind.__name__}, got {value!r}")
            object.__setattr__(self, name, value.validated(name))

    def marker(self) -> dict:
        """The JSON content of the ``.complete`` marker: :data:`GENERATOR_VERSION`, the seed and every set's
        fields (sizes as ``[h, w]`` lists, as JSON reads them back)."""

        def fields(part: ImagesSpec | CocoSpec | AdeSpec) -> dict:
            return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(part).items()}

        return {
            "version": GENERATOR_VERSION,
            "seed": self.seed,
            "images": fields(self.images),
            "coco": fields(self.coco),
            "ade": fields(self.ade),
        }

"""A method the engine has never seen trains, checkpoints, resumes and exports through the engine unchanged:
the engine reads a method only through :class:`pretrain.methods.PretrainingMethod`."""

from __future__ import annotations

import contextlib
import json
import os

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from pretrain import methods
from pretrain.engine.config import ConfigError, load_config
from pretrain.engine.schedules import CosineSchedule
from pretrain.engine.train import train
from pretrain.export import load_backbone
from pretrain.models import build_vit
from pretrain.models.from_config import backbone_config
from tests.support.tiny import tiny_overrides


class _Resized(Dataset):
    def __init__(self, images, size: int):
        self.images, self.size = images, size

    def set_epoch(self, epoch: int) -> None:
        pass  # the same sample in every pass

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        img = self.images.load(index).resize((self.size, self.size), Image.BILINEAR)
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(self.size, self.size, 3)
        return {"image": x.permute(2, 0, 1).float() / 255.0}


class MeanColour(methods.PretrainingMethod):
    """Predicts each image's mean colour from the CLS token: the smallest objective with a backbone to export."""

    name = "mean_colour"
    loss_terms = ("mse",)
    steps = 0

    @classmethod
    def build_dataset(cls, cfg, images):
        return _Resized(images, cfg.crops.global_size)

    @classmethod
    def build_collator(cls, cfg):
        return lambda samples: {"images": torch.stack([s["image"] for s in samples])}

    @classmethod
    def schedules(cls, cfg, iters_per_epoch, total):
        return {"target_scale": CosineSchedule(1.0, 0.5, total)}

    def __init__(self, cfg):
        super().__init__()
        backbone = build_vit(backbone_config(cfg))
        self.student = nn.ModuleDict({"backbone": backbone, "head": nn.Linear(backbone.embed_dim, 3)})

    def trainable_modules(self):
        return self.student

    def forward(self, batch, values):
        x = batch["images"]
        pred = self.student["head"](self.student["backbone"](x)["cls"])
        mse = ((pred - values["target_scale"] * x.mean(dim=(2, 3))) ** 2).mean()
        return {"loss": mse, "mse": mse}

    def after_step(self, values):
        type(self).steps += 1

    def backbone_to_export(self):
        return self.student["backbone"]


@contextlib.contextmanager
def registered():
    """MeanColour registered as ``mean_colour``, its step counter at 0."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(methods.METHODS, "mean_colour", MeanColour)
        MeanColour.steps = 0
        yield


def _overrides(images, out):
    return tiny_overrides(images, out, **{"method": "mean_colour", "pos_field.enabled": "false"})


def test_an_unregistered_method_is_a_config_error(toy_images, tmp_path):
    with pytest.raises(ConfigError, match=r"method must be one of \[[^]]*'intertwined'[^]]*\], got 'mean_colour'"):
        load_config([], _overrides(toy_images, str(tmp_path)))


@pytest.fixture(scope="module")
def full_run(toy_images, tmp_path_factory):
    """A 12-iteration run of the new method: its result, the steps counted by after_step, the logged rows."""
    out = str(tmp_path_factory.mktemp("mean_colour") / "run")
    with registered():
        result = train(load_config([], _overrides(toy_images, out)))
        steps = MeanColour.steps
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return dict(result=result, steps=steps, logged=[r for r in rows if "mse" in r])


def test_a_new_method_trains_to_the_end_calling_after_step_every_iteration(full_run):
    assert full_run["result"]["stopped"] is False and full_run["steps"] == 12  # 4 epochs x 3 iterations


def test_a_new_method_logs_its_loss_terms_and_schedules_every_iteration(full_run):
    logged = full_run["logged"]
    assert len(logged) == 12 and logged[0]["target_scale"] == 1.0 > logged[-1]["target_scale"] > 0.5


def test_a_new_method_minimises_its_objective(full_run):
    logged = full_run["logged"]
    assert logged[-1]["mse"] < logged[0]["mse"]  # the objective is minimised, not only computed


def test_a_new_method_exports_its_backbone_with_its_name_and_last_iteration(full_run):
    backbone, meta = load_backbone(full_run["result"]["backbone"])
    assert meta["method"] == "mean_colour" and meta["iteration"] == 11
    assert sum(p.numel() for p in backbone.parameters()) > 0


@pytest.fixture(scope="module")
def stopped_and_resumed(toy_images, tmp_path_factory):
    """The new method stopped after 6 iterations (checkpoints every 3), then the full run in the same folder:
    (result, steps counted so far) after each."""
    out = str(tmp_path_factory.mktemp("mean_colour_resume") / "run")
    with registered():
        first = train(
            load_config([], _overrides(toy_images, out) + ["train.max_iterations=6", "train.checkpoint_every=3"])
        )
        first_steps = MeanColour.steps
        second = train(load_config([], _overrides(toy_images, out)))
        second_steps = MeanColour.steps
    return (first, first_steps), (second, second_steps)


def test_max_iterations_stops_a_new_method_after_that_many_steps(stopped_and_resumed):
    (first, steps), _ = stopped_and_resumed
    assert first["iteration"] == 5 and steps == 6


def test_a_new_method_resumes_from_its_checkpoint(stopped_and_resumed):
    _, (second, steps) = stopped_and_resumed
    assert second["iteration"] == 11 and steps == 12  # 6 more steps, not 12

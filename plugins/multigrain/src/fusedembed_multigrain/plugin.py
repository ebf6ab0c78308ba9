"""The plugin's hooks (entry point ``multigrain``); the registry files each component as
``multigrain/<name>``."""

from pathlib import Path

import fusedembed

from . import data
from .evaluator import Accuracy
from .loss import MarginLoss
from .model import MultiGrain
from .retrieval import RetrievalEvaluator
from .sampler import RepeatedAugmentationSampler

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
RECIPES = {
    "imagenet_r50": "MultiGrain ResNet-50 as the README trains it: GeM p=3, repeated augmentation m=3, "
                    "0.5 CE + 0.5 margin with distance-weighted sampling, batch 512, LR 0.2, 120 epochs",
    "scenes": "the demo: a small trunk on the embedded scenes (object count), lambda = 0.5 with RA (CPU, minutes)",
}


@fusedembed.hookimpl
def fusedembed_register_models(register):
    register("multigrain", MultiGrain, description="trunk + GeM (fixed p, optional 1 channel) + classifier "
             "on the un-normalised GeM; embedding l2n(GeM); integrated PCA whitening")


@fusedembed.hookimpl
def fusedembed_register_losses(register):
    register("margin", MarginLoss, description="margin loss (alpha 0.2, learnable beta) on distance-weighted "
             "samples of the (global) batch; pair_cnt any (release) or terms (MXNet)")


@fusedembed.hookimpl
def fusedembed_register_samplers(register):
    register("repeated_augmentation", RepeatedAugmentationSampler,
             description="each image m times in a row, epoch x2.0; copies on one rank (or DeiT's spread)")


@fusedembed.hookimpl
def fusedembed_register_datasets(register):
    register("imagenet", data.imagefolder)
    register("scenes_objects", data.scenes_objects)


@fusedembed.hookimpl
def fusedembed_register_evaluators(register):
    register("accuracy", Accuracy, description="top-k accuracy of logits against the int label")
    register("retrieval", RetrievalEvaluator, description="Holidays / UKBench / Copydays / revisited "
             "Oxford-Paris from a folder")


@fusedembed.hookimpl
def fusedembed_register_recipes(register):
    for name, description in RECIPES.items():
        register(name, RECIPE_DIR / f"{name}.yaml", description=description)


@fusedembed.hookimpl
def fusedembed_register_demos(register):
    from . import demo

    register("multigrain", demo.main, description="scenes: CE vs CE+margin+DWS+RA, GeM p=3 vs average; "
             "accuracy and copy-detection mAP before/after p* and whitening (CPU, a few minutes)")

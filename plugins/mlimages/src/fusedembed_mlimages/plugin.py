"""The plugin's hooks (the module its entry point names, ``mlimages``): every component of the
recipes is registered here, by name; the registry files each as ``mlimages/<name>``."""

from pathlib import Path

import fusedembed

from . import data, demo
from .evaluator import Accuracy, MultiLabelTerciles
from .loss import SampledWeightedSigmoidLoss
from .model import MLImagesClassifier
from .resnet import preact_resnet101

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
RECIPES = {
    "ml_images": "ResNet-101 on the 11,166-class ML-Images lists as the paper trains it (paper loss, "
                 "augmentation, BN 0.9/1e-3, warm-up x1.297 for 8 epochs, x0.1 every 25, 60 epochs, batch 4096)",
    "ml_images_code": "the same as the released train.py / train.sh run it (code loss, augmentation, BN "
                      "0.997/1e-5, train.sh's schedule)",
    "finetune_imagenet": "transfer to ImageNet as finetune.py does it (softmax CE, FixBlock2, LR 0.1 x0.1 "
                         "every 150k steps, weight decay 1e-4 / 1e-5 on BN)",
    "scenes": "the demo: a small pre-activation ResNet, multi-label on the embedded scenes (CPU, a minute)",
    "scenes_finetune": "the demo's transfer: the scenes net fine-tuned to a single-label task (distinct colours)",
}


@fusedembed.hookimpl
def fusedembed_register_backbones(register):
    register("preact_resnet101", preact_resnet101)


@fusedembed.hookimpl
def fusedembed_register_models(register):
    register("classifier", MLImagesClassifier, description="ML-Images classifier: image backbone + one FC layer "
             "(features, embedding, logits)")


@fusedembed.hookimpl
def fusedembed_register_losses(register):
    register("sampled_weighted_sigmoid", SampledWeightedSigmoidLoss,
             description="ML-Images weighted sigmoid CE with per-class state: mode paper or code (fused op)")


@fusedembed.hookimpl
def fusedembed_register_datasets(register):
    register("mlimages", data.mlimages)
    register("labelled_list", data.labelled_list)
    register("scenes_multilabel", data.scenes_multilabel)


@fusedembed.hookimpl
def fusedembed_register_evaluators(register):
    register("multilabel_terciles", MultiLabelTerciles,
             description="instance-level P@k/R@k/F1@k (per image), mAP, and both per training-frequency tercile")
    register("accuracy", Accuracy, description="top-k accuracy of logits against the int label")


@fusedembed.hookimpl
def fusedembed_register_recipes(register):
    for name, description in RECIPES.items():
        register(name, RECIPE_DIR / f"{name}.yaml", description=description)


@fusedembed.hookimpl
def fusedembed_register_demos(register):
    register("mlimages", demo.main, description="multi-label scenes with BCE, BCE+pos_weight, code and paper "
             "losses; P@k/R@k/F1@k, mAP (rare third); transfer vs scratch (CPU, about 5 min)")

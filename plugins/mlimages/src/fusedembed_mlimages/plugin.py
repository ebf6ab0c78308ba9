"""The plugin's hooks (the module its entry point names, ``mlimages``): every component of the
recipes is registered here, by name; the registry files each as ``mlimages/<name>``."""

import fusedembed

from . import data
from .loss import SampledWeightedSigmoidLoss
from .model import MLImagesClassifier
from .resnet import preact_resnet101


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

"""The plugin's hooks (the module its entry point names, ``mlimages``): every component of the
recipes is registered here, by name; the registry files each as ``mlimages/<name>``."""

import fusedembed

from . import data
from .loss import SampledWeightedSigmoidLoss


@fusedembed.hookimpl
def fusedembed_register_losses(register):
    register("sampled_weighted_sigmoid", SampledWeightedSigmoidLoss,
             description="ML-Images weighted sigmoid CE with per-class state: mode paper or code (fused op)")


@fusedembed.hookimpl
def fusedembed_register_datasets(register):
    register("mlimages", data.mlimages)
    register("labelled_list", data.labelled_list)
    register("scenes_multilabel", data.scenes_multilabel)

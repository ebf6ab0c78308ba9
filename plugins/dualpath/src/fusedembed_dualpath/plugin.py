"""The plugin's hooks (the module its entry point names): every component of the recipe is
registered here, by name, through fusedembed's plugin system."""

from pathlib import Path

import fusedembed

from . import datasets
from .evaluator import RetrievalEvaluator
from .losses import BidirRankingLoss, InstanceLoss
from .model import DualPath
from .textcnn import TextCNN

CONFIGS = Path(__file__).resolve().parent / "configs"
RECIPES = {
    "scenes": "the demo: small dual-path net on the embedded scenes data, Stage I then II (CPU, minutes)",
    "flickr30k": "ResNet-50 + TextCNN on Flickr30k (Karpathy split), Stage I then II",
    "coco": "ResNet-50 + TextCNN on MSCOCO (113,287 training images), Stage I then II, 1K/5K test",
    "cuhk_pedes": "ResNet-50 + TextCNN on CUHK-PEDES (identity = class), Stage I then II",
}


@fusedembed.hookimpl
def fusedembed_register_backbones(register):
    register("textcnn", TextCNN, description="Dual-path TextCNN: word vectors, 1x2 bottleneck ResNet, FC-BN-ReLU")


@fusedembed.hookimpl
def fusedembed_register_models(register):
    register("dualpath", DualPath, description="Dual-path image-text model: image branch + text branch, one space")


@fusedembed.hookimpl
def fusedembed_register_losses(register):
    register("instance", InstanceLoss, description="instance loss: every image its own class, one classifier "
             "for both branches, chunked CE")
    register("bidir_ranking", BidirRankingLoss, description="bidirectional hinge ranking loss (hardest, sum "
             "or candidate-bank negatives)")


@fusedembed.hookimpl
def fusedembed_register_datasets(register):
    register("dualpath_flickr30k", datasets.flickr30k)
    register("dualpath_coco", datasets.coco)
    register("cuhk_pedes", datasets.cuhk_pedes)


@fusedembed.hookimpl
def fusedembed_register_evaluators(register):
    register("dualpath_retrieval", RetrievalEvaluator,
             description="image<->text R@1/5/10, median rank, rsum; COCO 1K and 5K; "
                         "person search by identity")


@fusedembed.hookimpl
def fusedembed_register_configs(register):
    for name, description in RECIPES.items():
        register(name, CONFIGS / f"{name}.yaml", description=description)

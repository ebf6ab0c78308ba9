"""The plugin's hooks (the module its entry point names, ``dualpath``): every component of the
recipes is registered here, by name; the registry files each as ``dualpath/<name>``."""

from pathlib import Path

import fusedembed

from . import datasets, demo
from .evaluator import RetrievalEvaluator
from .losses import BidirRankingLoss, InBatchInstanceLoss, InstanceLoss, PairRankingLoss
from .model import DualPath
from .textcnn import TextCNN

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
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
    register("bidir_ranking", BidirRankingLoss, description="bidirectional hinge ranking loss (hardest, sum, "
             "random or candidate-bank negatives)")
    register("pair_ranking", PairRankingLoss, description="the authors' RankLoss: first half anchors, second "
             "half their negatives, sum / batch")
    register("inbatch_instance", InBatchInstanceLoss, description="layumi's PyTorch instance loss: CE of "
             "gamma * normalised f f^T against the batch index")


@fusedembed.hookimpl
def fusedembed_register_datasets(register):
    register("flickr30k", datasets.flickr30k)
    register("coco", datasets.coco)
    register("cuhk_pedes", datasets.cuhk_pedes)


@fusedembed.hookimpl
def fusedembed_register_evaluators(register):
    register("retrieval", RetrievalEvaluator,
             description="image<->text R@1/5/10, median rank, rsum; COCO 1K and 5K; "
                         "person search by identity")


@fusedembed.hookimpl
def fusedembed_register_recipes(register):
    for name, description in RECIPES.items():
        register(name, RECIPE_DIR / f"{name}.yaml", description=description)


@fusedembed.hookimpl
def fusedembed_register_demos(register):
    register("dualpath", demo.main, description="dual-path retrieval on the embedded scenes: Stage I + II, "
             "table vs chance and a BoW+CCA baseline (CPU, 7 to 15 min)")

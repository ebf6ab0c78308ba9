"""The plugin's hooks (entry point ``alignment``); the registry files each component as
``alignment/<name>``."""

from pathlib import Path

import fusedembed

from . import backbones
from .data import karpathy_boxes
from .evaluator import RetrievalEvaluator
from .generator import registration as generator
from .model import AlignmentModel
from .score import RankingLoss

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
RECIPES = {
    "scenes": "the demo: tiny_cnn regions (whole image + the scene's boxes, RoIAlign) x BRNN words on the "
              "embedded scenes (CPU, minutes)",
    "flickr8k": "Flickr8k, Karpathy split: VGG-16 fc7 of 19 detected boxes + the image, BRNN on word2vec, h=1000",
    "flickr30k": "Flickr30k, Karpathy split: as flickr8k",
    "coco": "MSCOCO, Karpathy split (train+restval), 1K (5 folds) and 5K test: as flickr8k",
}


@fusedembed.hookimpl
def fusedembed_register_backbones(register):
    register("alexnet", backbones.alexnet)
    register("vgg16", backbones.vgg16)


@fusedembed.hookimpl
def fusedembed_register_models(register):
    register("alignment", AlignmentModel, description="regions (whole image + boxes; crop or RoIAlign) and "
             "BRNN words in one h-d space; outputs regions/num_regions, words/lengths")
    generator.register_models(register)


@fusedembed.hookimpl
def fusedembed_register_losses(register):
    register("ranking", RankingLoss, description="bidirectional max-margin ranking of S_kl = sum_t max_i "
             "v_i.s_t over the (global) batch")
    generator.register_losses(register)


@fusedembed.hookimpl
def fusedembed_register_datasets(register):
    register("karpathy_boxes", karpathy_boxes)
    generator.register_datasets(register)


@fusedembed.hookimpl
def fusedembed_register_evaluators(register):
    register("retrieval", RetrievalEvaluator, description="S_kl image<->sentence retrieval: R@1/5/10, "
             "median rank (COCO 1K/5K)")
    generator.register_evaluators(register)


@fusedembed.hookimpl
def fusedembed_register_recipes(register):
    for name, description in RECIPES.items():
        register(name, RECIPE_DIR / f"{name}.yaml", description=description)
    generator.register_recipes(register)


@fusedembed.hookimpl
def fusedembed_register_demos(register):
    from . import demo

    register("alignment", demo.main, description="scenes: regions x BRNN vs bag of words, retrieval vs chance; "
             "word -> region accuracy of the MRF snippets vs beta (CPU, minutes)")
    generator.register_demos(register)

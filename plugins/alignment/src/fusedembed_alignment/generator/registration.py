"""What the generator adds to the alignment plugin; ``plugin.py``'s hooks call these."""

from pathlib import Path

from . import datasets, demo
from .evaluator import CaptionEvaluator
from .model import CaptionNLL, MultimodalRNN

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = {
    "generator_scenes": "the generator demo: multimodal RNN describing the embedded scenes (CPU, minutes)",
    "generator_scenes_regions": "region generator on scenes: box crops and their snippets (CPU, minutes)",
    "generator_flickr8k": "multimodal RNN on Flickr8k (Karpathy split), frozen ResNet-50 features, RMSProp",
    "generator_flickr30k": "multimodal RNN on Flickr30k (Karpathy split), frozen ResNet-50 features, RMSProp",
    "generator_coco": "multimodal RNN on MSCOCO (Karpathy split, 113,287 training images), frozen ResNet-50, RMSProp",
}


def register_models(register):
    register("generator", MultimodalRNN, description="Karpathy & Fei-Fei multimodal RNN (or LSTM) sentence "
             "generator: image at t=1, ReLU recurrence, softmax over words")


def register_losses(register):
    register("caption_nll", CaptionNLL, description="caption negative log-likelihood, summed over words, "
             "averaged over sentences")


def register_datasets(register):
    register("generator_karpathy", datasets.generator_karpathy)
    register("region_snippets", datasets.region_snippets)


def register_evaluators(register):
    register("captions", CaptionEvaluator, description="generated captions vs references: BLEU-1..4, "
             "ROUGE-L, CIDEr-D, METEOR (with java)")


def register_recipes(register):
    for name, description in RECIPES.items():
        register(name, RECIPE_DIR / f"{name}.yaml", description=description)


def register_demos(register):
    register("generator", demo.main, description="caption generator on scenes: greedy vs beam 3 vs the "
             "nearest-neighbour baseline, images and boxes (CPU, minutes)")

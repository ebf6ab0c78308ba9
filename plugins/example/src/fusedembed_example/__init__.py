"""fusedembed-example: the smallest complete plugin. Its hooks are all in this module, the
module its entry point names; the components live in components.py."""

from pathlib import Path

import fusedembed

from .components import CenterLoss, ConvNet, NoiseShapes

__version__ = "0.1.0"
RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


@fusedembed.hookimpl
def fusedembed_register_backbones(register):
    register("convnet", ConvNet)


@fusedembed.hookimpl
def fusedembed_register_losses(register):
    register("center", CenterLoss)


@fusedembed.hookimpl
def fusedembed_register_datasets(register):
    register("noise", NoiseShapes, description="coloured noise images, one colour per class")


@fusedembed.hookimpl
def fusedembed_register_recipes(register):
    register("tiny", RECIPE_DIR / "tiny.yaml", description="example backbone + center loss on noise images")

"""The plugin's hooks (entry point ``alignment``); the registry files each component as
``alignment/<name>``."""

from pathlib import Path

import fusedembed

from .generator import registration as generator

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
RECIPES: dict = {}


@fusedembed.hookimpl
def fusedembed_register_models(register):
    generator.register_models(register)


@fusedembed.hookimpl
def fusedembed_register_losses(register):
    generator.register_losses(register)


@fusedembed.hookimpl
def fusedembed_register_datasets(register):
    generator.register_datasets(register)


@fusedembed.hookimpl
def fusedembed_register_evaluators(register):
    generator.register_evaluators(register)


@fusedembed.hookimpl
def fusedembed_register_recipes(register):
    for name, description in RECIPES.items():
        register(name, RECIPE_DIR / f"{name}.yaml", description=description)
    generator.register_recipes(register)


@fusedembed.hookimpl
def fusedembed_register_demos(register):
    generator.register_demos(register)

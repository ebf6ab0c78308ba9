"""The plugin's hooks (entry point ``alignment``); the registry files each component as
``alignment/<name>``."""

from pathlib import Path

import fusedembed

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
RECIPES: dict = {}


@fusedembed.hookimpl
def fusedembed_register_recipes(register):
    for name, description in RECIPES.items():
        register(name, RECIPE_DIR / f"{name}.yaml", description=description)

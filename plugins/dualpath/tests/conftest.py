import pytest


@pytest.fixture(scope="session")
def tiny_recipe(scenes_root):
    """dualpath/scenes shrunk to seconds (call it inside a test that uses the ``registries``
    fixture)."""
    from fusedembed_dualpath.testing import tiny_overrides

    from fusedembed import load_recipe

    def make(*extra):
        return load_recipe("dualpath/scenes", [*tiny_overrides(scenes_root), *extra])

    return make

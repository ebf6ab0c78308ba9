import importlib.util
import sys
from pathlib import Path

import pytest

# The tests run against the installed package; from a source checkout without it, use src/.
if importlib.util.find_spec("fusedembed_dualpath") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


@pytest.fixture(scope="session")
def regs():
    from fusedembed.testing import plugin_manager

    manager = plugin_manager(dualpath="fusedembed_dualpath.plugin")
    assert manager.plugins["dualpath"].ok, manager.plugins["dualpath"].error
    return manager.registries


@pytest.fixture(scope="session")
def scenes_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("scenes-cache"))


@pytest.fixture(scope="session")
def tiny_recipe(regs, scenes_root):
    """dualpath/scenes shrunk to seconds: 64 train images of 32x32, tiny nets."""
    from fusedembed import load_config

    def make(*extra):
        scenes = [f"data.{s}.{k}={v}" for s in ("train", "val", "test")
                  for k, v in (("root", scenes_root), ("image_size", 32), ("progress", False), ("workers", 1),
                               ("train_images", 64))]
        return load_config("dualpath/scenes", [
            *scenes, "data.train.num_images=64", "data.val.num_images=16", "data.test.num_images=16",
            "model.dim=32", "model.image_backbone.width=8", "model.image_backbone.depth=2",
            "model.text_backbone.word_dim=16", "model.text_backbone.widths=[16,16,32,32]",
            "model.text_backbone.fc_dim=32", "model.text_backbone.vocab_size=76",
            "losses.0.num_classes=64", "losses.0.dim=32",
            "stages.1.losses.0.dim=32", "stages.1.losses.1.num_classes=64", "stages.1.losses.1.dim=32",
            "stages.0.trainer.epochs=4", "stages.1.trainer.epochs=2", "trainer.batch_size=16", "trainer.eval_batch_size=16", "trainer.log_every=1",
            *extra], registries=regs)

    return make

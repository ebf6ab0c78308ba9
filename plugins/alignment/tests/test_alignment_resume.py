"""Trainings of the alignment and generator demo recipes killed mid-epoch and resumed equal
uninterrupted ones, bit for bit (dropout, the drawn caption of each image, RMSProp state)."""

import pytest

from fusedembed import load_recipe
from fusedembed.testing import assert_resumes_exactly

# Each in 4 steps an epoch (alignment: 40 images, one caption each per batch of 10; generator:
# 8 images x 5 captions); last.pt at step 6 = epoch 1, batch 2.
RECIPES = {
    "alignment/scenes": (40, ["model.hidden=16", "model.word_dim=8"]),
    "alignment/generator_scenes": (8, ["model.hidden=16", "model.image_backbone.width=4"]),
}


@pytest.mark.parametrize("name", RECIPES)
def test_sigkill_mid_epoch_then_resume_is_bit_identical(registries, scenes_root, tmp_path, name):
    images, model = RECIPES[name]
    recipe = load_recipe(name, [
        *(f"data.{s}.{k}={v}" for s in ("train", "val") for k, v in
          (("root", scenes_root), ("train_images", images), ("progress", False))),
        f"data.train.num_images={images}", "data.val.num_images=10", "data.test=null", "trainer.epochs=2",
        "trainer.batch_size=10", "trainer.eval_batch_size=10", "trainer.checkpoint_every=3",
        "trainer.log_every=1", *model])
    states = assert_resumes_exactly(recipe, tmp_path, kill_at=7)
    assert (states["cut"]["epoch"], states["cut"]["batch"]) == (1, 2)

"""Trainings of the alignment and generator demo recipes killed mid-epoch and resumed equal
uninterrupted ones, bit for bit (dropout, the drawn caption of each image, RMSProp state)."""

from fusedembed import load_recipe
from fusedembed.testing import assert_resumes_exactly


def test_alignment_sigkill_mid_epoch_then_resume_is_bit_identical(registries, scenes_root, tmp_path):
    # 40 images in batches of 10: 4 steps an epoch; last.pt at step 6 = epoch 1, batch 2
    recipe = load_recipe("alignment/scenes", [
        *(f"data.{s}.{k}={v}" for s in ("train", "val") for k, v in
          (("root", scenes_root), ("train_images", 40), ("progress", False))),
        "data.train.num_images=40", "data.val.num_images=10", "data.test=null", "trainer.epochs=2",
        "trainer.batch_size=10", "trainer.eval_batch_size=10", "trainer.checkpoint_every=3",
        "trainer.log_every=1", "model.hidden=16", "model.word_dim=8"])
    states = assert_resumes_exactly(recipe, tmp_path, kill_at=7)
    assert (states["cut"]["epoch"], states["cut"]["batch"]) == (1, 2)


def test_generator_sigkill_mid_epoch_then_resume_is_bit_identical(registries, scenes_root, tmp_path):
    # 8 images x 5 captions in batches of 10: 4 steps an epoch
    recipe = load_recipe("alignment/generator_scenes", [
        *(f"data.{s}.{k}={v}" for s in ("train", "val") for k, v in
          (("root", scenes_root), ("train_images", 8), ("progress", False))),
        "data.train.num_images=8", "data.val.num_images=4", "data.test=null", "trainer.epochs=2",
        "trainer.batch_size=10", "trainer.eval_batch_size=4", "trainer.checkpoint_every=3",
        "trainer.log_every=1", "model.hidden=16", "model.image_backbone.width=4"])
    states = assert_resumes_exactly(recipe, tmp_path, kill_at=7)
    assert (states["cut"]["epoch"], states["cut"]["batch"]) == (1, 2)

"""A training of the demo recipe killed mid-epoch and resumed equals an uninterrupted one, bit
for bit: repeated augmentation's batches, the random crops, distance-weighted sampling."""

from fusedembed import load_recipe
from fusedembed.testing import assert_resumes_exactly


def test_sigkill_mid_epoch_then_resume_is_bit_identical(registries, scenes_root, tmp_path):
    # 48 images, epoch_len_factor 2, batches of 12 (4 images x 3 repeats): 8 steps an epoch
    recipe = load_recipe("multigrain/scenes", [
        f"data.train.root={scenes_root}", "data.train.num_images=48", f"data.val.root={scenes_root}",
        "data.val.num_images=24", "data.sampler.batch_size=12", "trainer.batch_size=12",
        "trainer.eval_batch_size=24", "model.width=4", "trainer.epochs=1", "trainer.checkpoint_every=3",
        "trainer.log_every=1"])
    states = assert_resumes_exactly(recipe, tmp_path, kill_at=5)
    assert (states["cut"]["epoch"], states["cut"]["batch"]) == (0, 3)

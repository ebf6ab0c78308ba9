"""A training of the demo recipe killed mid-epoch and resumed equals an uninterrupted one, bit
for bit: the per-class state of the loss, its negative sampling stream, worker seeds."""

import pytest

from fusedembed import load_recipe
from fusedembed.testing import assert_resumes_exactly


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(registries, tiny_scenes, tmp_path, workers):
    # 64 images in batches of 16: 4 steps an epoch; last.pt at step 6 = epoch 1, batch 2
    recipe = load_recipe("mlimages/scenes", tiny_scenes("mlimages/scenes", "trainer.epochs=2",
                                                        "trainer.checkpoint_every=3", f"trainer.workers={workers}"))
    states = assert_resumes_exactly(recipe, tmp_path, kill_at=7)
    assert (states["cut"]["epoch"], states["cut"]["batch"]) == (1, 2)
    assert int(states["resumed"]["losses"]["0.rule.pos_count"].max()) >= 1

import pytest


@pytest.fixture(scope="session")
def tiny_scenes(scenes_root):
    """Overrides that shrink mlimages/scenes (and scenes_finetune) to seconds: 64 train images
    of 32x32, a width-4 net (call load_recipe inside a test that uses ``registries``)."""

    def make(recipe="mlimages/scenes", *extra):
        sections = ["data.train", "data.test"] + (["data.val", "evaluators.0.train_data"]
                                                 if recipe == "mlimages/scenes" else [])
        data = [f"{s}.{k}={v}" for s in sections for k, v in (("root", scenes_root), ("image_size", 32),
                                                              ("progress", False), ("workers", 1))]
        sizes = (["data.train.num_images=64", "data.val.num_images=16", "data.test.num_images=32",
                  "evaluators.0.train_data.num_images=64"] if recipe == "mlimages/scenes" else
                 ["data.train.num_images=32", "data.test.num_images=32"])
        return [*data, *sizes, "model.backbone.width=4", "trainer.batch_size=16", "trainer.eval_batch_size=16",
                "trainer.epochs=1", "trainer.log_every=1", *extra]

    return make

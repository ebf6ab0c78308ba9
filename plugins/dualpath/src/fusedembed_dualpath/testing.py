"""The demo recipe shrunk to seconds, for tests of this plugin and of commands that need a
trained dual-path model (the core README's)."""


def tiny_overrides(scenes_root: str) -> list:
    """Dotted overrides of ``dualpath/scenes``: 64 train images of 32x32 and tiny nets."""
    data = [f"data.{s}.{k}={v}" for s in ("train", "val", "test")
            for k, v in (("root", scenes_root), ("image_size", 32), ("progress", False), ("workers", 1),
                         ("train_images", 64))]
    return [
        *data, "data.train.num_images=64", "data.val.num_images=16", "data.test.num_images=16",
        "model.dim=32", "model.image_backbone.width=8", "model.image_backbone.depth=2",
        "model.text_backbone.word_dim=16", "model.text_backbone.widths=[16,16,32,32]",
        "model.text_backbone.first_mids=null",
        "model.text_backbone.fc_dim=32", "model.text_backbone.vocab_size=76",
        "losses.0.num_classes=64", "losses.0.dim=32",
        "stages.1.losses.0.dim=32", "stages.1.losses.1.num_classes=64", "stages.1.losses.1.dim=32",
        "stages.0.trainer.epochs=4", "stages.1.trainer.epochs=2", "trainer.batch_size=16",
        "trainer.eval_batch_size=16", "trainer.log_every=1",
    ]

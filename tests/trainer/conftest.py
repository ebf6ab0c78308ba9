import pytest
import yaml

from fusedembed.config import validate


@pytest.fixture
def make_recipe(scenes_root):
    """A tiny multi-label recipe on 16x16 scenes; ``**sections`` merge over the defaults
    (``trainer={...}`` updates keys, others replace)."""

    def make(**sections):
        scenes = {"name": "scenes", "root": scenes_root, "num_images": 32, "image_size": 16,
                  "view": "image", "progress": False, "workers": 1}
        tree = {
            "model": {"name": "image_embedding", "num_classes": 57, "embed_dim": 8,
                      "backbone": {"name": "tiny_cnn", "width": 4, "depth": 2}},
            "losses": [{"name": "bce", "inputs": {"logits": "logits", "labels": "labels"}}],
            "data": {"train": scenes, "val": {**scenes, "num_images": 16, "train_images": 32}},
            "evaluators": [{"name": "multilabel", "ks": [5]}],
            "trainer": {"epochs": 2, "lr": 0.1, "batch_size": 8, "log_every": 2, "seed": 0,
                        "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True}},
        }
        for key, value in sections.items():
            if key == "trainer":
                tree["trainer"].update(value)
            else:
                tree[key] = value
        return validate(tree)

    return make


@pytest.fixture
def dump_recipe():
    """Writes a Recipe as YAML (for the CLI and torchrun)."""
    from fusedembed.config import to_dict

    def dump(recipe, path):
        path.write_text(yaml.safe_dump(to_dict(recipe)))
        return path

    return dump

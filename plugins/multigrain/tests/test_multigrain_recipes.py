"""The plugin's components build from its recipes; the demo runs end to end at toy size."""

import pytest
import torch
from fusedembed_multigrain.transforms import (
    EIG_VALS,
    EIG_VECS,
    Lighting,
    ResizeLargest,
    eval_transform,
    train_transform,
)

from fusedembed import build, load_recipe


def test_imagenet_recipe_is_the_readme_run(installed_registries):
    r = load_recipe("multigrain/imagenet_r50")
    assert r.model["arch"] == "resnet50" and r.model["p"] == 3.0
    assert [(e["name"], e["weight"]) for e in r.losses] == [("cross_entropy", 0.5), ("multigrain/margin", 0.5)]
    t = r.trainer
    assert (t.batch_size, t.lr, t.epochs, t.optimizer.momentum, t.optimizer.weight_decay) == (512, 0.2, 120, 0.9, 1e-4)
    assert t.scheduler.milestones == [31, 61, 91] and t.loss_lr_mult == 1.0 and t.loss_weight_decay == 0.0
    assert r.data.sampler["repeats"] == 3 and r.data.sampler["epoch_len_factor"] == 2.0
    model = build("model", r.model)
    assert model.feature_dim == 2048 and model.classifier.out_features == 1000
    margin = build("loss", {k: v for k, v in r.losses[1].items() if k != "weight"})
    assert margin.pair_cnt == "any" and float(margin.beta.detach()) == pytest.approx(1.2)


def test_demo_runs_at_toy_size(tmp_path, scenes_root, monkeypatch):
    from fusedembed_multigrain import demo

    monkeypatch.setenv("FUSEDEMBED_DATA", str(tmp_path / "data"))
    lines = []
    rows = demo.run(tmp_path / "run", [*demo.QUICK, "data.train.num_images=48", "data.val.num_images=24"],
                    out=lines.append, device="cpu", quick=True)
    assert set(rows) == set(demo.RUNS)
    for r in rows.values():
        assert 0 <= r["white"]["acc"] <= 100 and 0 < r["white"]["copy_map"] <= 100
        assert r["white"]["acc"] == pytest.approx(r["pstar"]["acc"])      # whitening keeps the argmax
    text = "\n".join(lines)
    assert "| run | p* |" in text and "reproduce" in text and (tmp_path / "run" / "top5.png").is_file()


def test_lighting_is_the_alexnet_pca_shift():
    torch.manual_seed(0)
    alpha = torch.randn(1, 3) * 0.1
    torch.manual_seed(0)
    img = torch.full((3, 2, 2), 0.5)
    out = Lighting(0.1)(img)
    shift = (torch.tensor(EIG_VECS) * alpha * torch.tensor(EIG_VALS).view(1, 3)).sum(1)
    torch.testing.assert_close(out, img + shift.view(3, 1, 1))


def test_transforms_shapes_and_rect_keeps_the_aspect():
    img = torch.rand(3, 40, 80)
    assert train_transform("full", 24)(img).shape == (3, 24, 24)
    assert train_transform("autoaugment", 24)(img).shape == (3, 24, 24)
    assert ResizeLargest(40)(img).shape == (3, 20, 40)
    assert eval_transform("rect", 40, normalize=False)(img).shape == (3, 20, 40)
    with pytest.raises(ValueError, match="kind must be one of"):
        train_transform("simple")


def test_imagenet_recipe_trains_on_an_imagefolder(tmp_path, installed_registries):
    import numpy as np
    from PIL import Image

    from fusedembed.trainer import train

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            (tmp_path / "in" / split / c).mkdir(parents=True)
            for i in range(6):
                arr = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / "in" / split / c / f"{c}_{i}.JPEG")
    root = tmp_path / "in"
    recipe = load_recipe("multigrain/imagenet_r50", [
        "model.arch=tiny", "model.width=4", "model.depth=2", "model.num_classes=2",
        f"data.train.root={root}", f"data.val.root={root}", "data.train.size=32", "data.val.size=32",
        "data.sampler.batch_size=6", "trainer.batch_size=6", "trainer.eval_batch_size=6", "trainer.workers=0",
        "trainer.epochs=1", "trainer.max_steps=2", "trainer.device=cpu"])
    metrics = train(recipe, tmp_path / "run", out=lambda line: None)
    assert 0 <= metrics["top1"] <= 100 and metrics["top5"] == 100.0      # 2 classes: top-5 always hits
    assert (tmp_path / "run" / "last.pt").is_file()

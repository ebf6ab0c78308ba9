"""finetune-p, whiten and evaluate as commands on a trained checkpoint."""

import json

import numpy as np
import pytest
import torch
from fusedembed_multigrain.tools import main
from PIL import Image

from fusedembed import load_recipe

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


@pytest.fixture
def trained(tmp_path, installed_registries):
    from fusedembed.trainer import train

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, colour in enumerate(COLOURS[:2]):
            (tmp_path / "in" / split / f"n0{c}").mkdir(parents=True)
            for i in range(6):
                arr = np.clip(rng.normal(colour, 30, (36, 44, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(tmp_path / "in" / split / f"n0{c}" / f"{i}.JPEG")
    overrides = ["model.arch=tiny", "model.width=4", "model.depth=2", "model.num_classes=2",
                 f"data.train.root={tmp_path / 'in'}", f"data.val.root={tmp_path / 'in'}", "data.train.size=32",
                 "data.val.size=32", "data.sampler.batch_size=6", "trainer.batch_size=6", "trainer.eval_batch_size=6",
                 "trainer.workers=0", "trainer.epochs=1", "trainer.max_steps=2", "trainer.device=cpu"]
    train(load_recipe("multigrain/imagenet_r50", overrides), tmp_path / "run", out=lambda line: None)
    return tmp_path, overrides


def test_finetune_p_whiten_evaluate(trained, capsys):
    from fusedembed.trainer import load_model

    tmp, overrides = trained
    ckpt = tmp / "run" / "last.pt"
    assert main(["finetune-p", "multigrain/imagenet_r50", str(ckpt), *overrides, "--size", "40", "--lr", "0.5",
                 "--images-per-class", "3", "--out", str(tmp / "p.pt")]) == 0
    p_star = json.loads(capsys.readouterr().out.splitlines()[0])["p"]
    recipe = load_recipe("multigrain/imagenet_r50", overrides)
    assert float(load_model(recipe, tmp / "p.pt", device="cpu").pool.p) == pytest.approx(p_star)
    assert p_star != pytest.approx(3.0)

    images = tmp / "in" / "val" / "n00"
    assert main(["whiten", "multigrain/imagenet_r50", str(tmp / "p.pt"), *overrides, "--images", str(images),
                 "--size", "40", "--out", str(tmp / "w.pt")]) == 0
    white = load_model(recipe, tmp / "w.pt", device="cpu")
    assert white.whitened and float(white.pool.p) == pytest.approx(p_star)
    x = torch.rand(2, 3, 40, 40)
    before = load_model(recipe, tmp / "p.pt", device="cpu")({"image": x})["logits"].argmax(1)
    assert torch.equal(white({"image": x})["logits"].argmax(1), before)

    uk = tmp / "ukbench"
    uk.mkdir()
    for i in range(8):
        Image.fromarray(np.full((30, 40, 3), COLOURS[i // 4], np.uint8)).save(uk / f"ukbench{i:05d}.jpg")
    capsys.readouterr()
    assert main(["evaluate", "multigrain/imagenet_r50", str(tmp / "w.pt"), *overrides, "--benchmark", "ukbench",
                 "--root", str(uk), "--size", "40"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["ns_score"] <= 4


def test_bad_input_is_named_before_any_work(tmp_path, capsys):
    """Usage errors (status 2) name the option; missing data is a DataError the command prints in one
    line (fusedembed.errors.run_command): the checkpoint is never loaded for either."""
    from fusedembed.data import DataError

    def usage_error(*argv):
        with pytest.raises(SystemExit) as exit_:
            main(list(argv))
        assert exit_.value.code == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert "argument --size: expected an integer > 0, got '0'" in usage_error(
        "finetune-p", "multigrain/scenes", "none.pt", "--size", "0", "--out", "p.pt")
    (tmp_path / "one").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "a.jpg")
    assert "--images: expected a folder of at least 2 images (jpg/png) to fit the whitening on, found 1" in usage_error(
        "whiten", "multigrain/scenes", "none.pt", "--images", str(tmp_path / "one"), "--out", "w.pt")
    with pytest.raises(DataError, match="nope: expected a folder of images, it is not a folder"):
        main(["whiten", "multigrain/scenes", "none.pt", "--images", str(tmp_path / "nope"), "--out", "w.pt"])

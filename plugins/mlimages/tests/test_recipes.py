"""Registration, the five recipes (their numbers, and that each builds), the evaluators against
hand cases, a few training steps of the demo recipes, and the demo end to end at toy size."""

import pytest
import torch
from fusedembed_mlimages.evaluator import Accuracy, multilabel_report, terciles

from fusedembed import build, load_recipe

RECIPES = ["ml_images", "ml_images_code", "finetune_imagenet", "scenes", "scenes_finetune"]


def test_registers_every_component_recipe_and_the_demo(registries):
    assert "mlimages/preact_resnet101" in registries["backbone"].list()
    assert "mlimages/classifier" in registries["model"].list()
    assert "mlimages/sampled_weighted_sigmoid" in registries["loss"].list()
    assert {"mlimages/mlimages", "mlimages/labelled_list", "mlimages/scenes_multilabel"} <= \
        set(registries["dataset"].list())
    assert {"mlimages/multilabel_terciles", "mlimages/accuracy"} <= set(registries["evaluator"].list())
    assert registries["recipe"].list("mlimages/*") == sorted(f"mlimages/{r}" for r in RECIPES)
    assert "mlimages/mlimages" in registries["demo"].list()
    # the core no longer has the paper's pieces
    assert "sampled_weighted_sigmoid" not in registries["loss"].list("builtin/*")
    assert not any(n.startswith("builtin/") for n in registries["demo"].list())


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_resolves_and_its_model_and_losses_build(registries, name):
    recipe = load_recipe(f"mlimages/{name}")
    with torch.device("meta"):               # the full ResNet-101s: structure only, no values
        model_cfg = dict(recipe.model)
        model_cfg["backbone"] = {k: v for k, v in model_cfg["backbone"].items() if k != "pretrained_path"}
        model = build("model", model_cfg)
    assert model.fc.out_features == model_cfg["num_classes"]
    for entry in recipe.losses:
        build("loss", {k: v for k, v in entry.items() if k not in ("weight", "inputs")})
    for e in recipe.evaluators:
        build("evaluator", {k: v for k, v in e.items() if k != "train_data"})


def test_the_full_recipes_carry_the_authors_numbers(registries):
    code, paper, ft = (load_recipe(f"mlimages/{n}") for n in ("ml_images_code", "ml_images", "finetune_imagenet"))
    c, p = code.losses[0], paper.losses[0]
    assert (c["mode"], c["pos_weight"], c["pos_threshold"], c["neg_select"], c["num_classes"]) == \
        ("code", 12.0, 0.7, 0.1, 11166)
    assert (p["mode"], p["decay"], p["neg_ratio"], p["empty_keep"]) == ("paper", 0.9, 5.0, 0.1)
    assert code.model["backbone"]["bn_decay"] == 0.997 and code.model["backbone"]["bn_eps"] == 1e-5
    assert paper.model["backbone"]["bn_decay"] == 0.9 and paper.model["backbone"]["bn_eps"] == 1e-3
    assert (code.data.train["train_transform"], paper.data.train["train_transform"]) == ("code", "paper")
    for r in (code, paper):
        t = r.trainer
        assert (t.batch_size, t.lr, t.optimizer.momentum, t.optimizer.weight_decay) == (4096, 0.08, 0.9, 1e-4)
        s = t.scheduler
        assert (s.warmup, s.warmup_epochs, s.warmup_factor, s.name, s.step_size, s.gamma) == \
            ("exponential", 8, 1.297, "step", 25, 0.1)
        assert t.optimizer.no_weight_decay == ["*bn*"] and t.optimizer.decay_norm_bias
    assert (paper.trainer.epochs, code.trainer.max_steps) == (60, 440000)
    assert ft.model["num_classes"] == 1000 and ft.losses[0]["name"] == "cross_entropy"
    assert (ft.trainer.lr, ft.trainer.batch_size, ft.trainer.max_steps, ft.trainer.scheduler.step_size) == \
        (0.1, 256, 600000, 30)
    assert ft.trainer.optimizer.weight_decay_mult == {"*bn*": 0.1} and ft.trainer.optimizer.weight_decay == 1e-4
    assert ft.data.train["train_transform"] == "finetune"


def test_the_paper_schedule_warms_up_from_0_01_to_0_08_then_steps_every_25_epochs(registries):
    from fusedembed.trainer.optim import lr_factor

    t = load_recipe("mlimages/ml_images").trainer
    lr = [t.lr * lr_factor(t.scheduler, e, t.epochs, t.lr) for e in range(60)]
    assert lr[0] == pytest.approx(0.01, rel=1e-3) and lr[1] == pytest.approx(0.01297, rel=1e-3)
    assert lr[7] == pytest.approx(0.01 * 1.297 ** 7, rel=1e-3) and lr[8] == pytest.approx(0.08)
    assert lr[24] == pytest.approx(0.08) and lr[25] == pytest.approx(0.008) and lr[59] == pytest.approx(0.0008)


def test_finetune_freezes_fixblock2_and_decays_bn_by_a_tenth(registries):
    from fusedembed.trainer.optim import param_groups

    recipe = load_recipe("mlimages/finetune_imagenet", ["model.backbone.pretrained_path=null",
                                                        "model.backbone.blocks=[1,1,1,1]", "model.backbone.width=4"])
    model = build("model", recipe.model)
    groups = param_groups(model.named_parameters(), recipe.trainer.lr, recipe.trainer.optimizer)
    decay = {n: g["weight_decay"] for g in groups for n in g["names"]}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters()
                      if n.startswith(("backbone.conv1.", "backbone.layer1.", "backbone.layer2."))}
    assert decay["backbone.layer3.0.conv2.weight"] == 1e-4 and decay["fc.bias"] == 1e-4
    assert decay["backbone.layer3.0.bn2.weight"] == pytest.approx(1e-5) and \
        decay["backbone.final_bn.bias"] == pytest.approx(1e-5)


def test_multilabel_report_hand_case_and_terciles():
    # 2 images, 4 classes; image 0 has {0, 1}, image 1 has {2}
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.0], [0.2, 0.3, 0.1, 0.9]])
    targets = torch.tensor([[1.0, 0.9, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    groups = terciles(torch.tensor([5, 1, 9, 3]))
    assert {k: v.tolist() for k, v in groups.items()} == {"rare": [1, 3], "mid": [0], "frequent": [2]}
    out = multilabel_report(scores, targets, ks=(2,), groups=groups)
    # image 0: top-2 {0, 2} -> 1 hit: P 1/2, R 1/2, F1 1/2; image 1: top-2 {3, 1} -> 0 hits
    assert (out["p@2"], out["r@2"], out["f1@2"]) == (pytest.approx(25.0), pytest.approx(25.0), pytest.approx(25.0))
    # rare classes {1, 3}: only image 0 has one (class 1): top-2 of 2 classes -> hit, R 1, P 1/2;
    # class 1's positive (0.1) ranks below image 1 (0.3): AP 1/2; class 3 has no positive
    assert out["rare/num_images"] == 1 and out["rare/p@2"] == pytest.approx(50.0) and out["rare/r@2"] == 100.0
    assert out["rare/map"] == pytest.approx(50.0) and out["rare/num_classes"] == 1
    assert "mid/p@2" not in out and out["mid/map"] == 100.0                   # k = 2 > its one class


def test_accuracy_evaluator():
    class Fixed(torch.nn.Module):
        def forward(self, batch):
            return {"logits": batch["scores"]}

    batch = {"scores": torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]]),
             "label": torch.tensor([1, 2, 2])}
    assert Accuracy(ks=[1, 2])(Fixed(), [batch], device="cpu") == {"top1": pytest.approx(200 / 3), "top2": 100.0}
    with pytest.raises(ValueError, match="ks must be ints >= 1"):
        Accuracy(ks=[0])
    # Equal logits (a collapsed model) scored the labels topk happened to list first (here 1 in 3);
    # NaN logits, which topk ranks above every number, scored too.
    equal = {"scores": torch.zeros(3, 3), "label": torch.tensor([0, 1, 2])}
    assert Accuracy(ks=[1])(Fixed(), [equal], device="cpu") == {"top1": 0.0}
    diverged = {"scores": torch.full((3, 3), float("nan")), "label": torch.tensor([0, 1, 2])}
    with pytest.raises(ValueError, match=r"scores contain NaN \(row 0 of 3\)"):
        Accuracy(ks=[1])(Fixed(), [diverged], device="cpu")


def test_a_few_training_steps_of_the_demo_recipes(registries, tiny_scenes, tmp_path):
    from fusedembed.trainer import evaluate, train

    recipe = load_recipe("mlimages/scenes", tiny_scenes("mlimages/scenes", "trainer.max_steps=3"))
    metrics = train(recipe, tmp_path / "ml", out=lambda _: None)
    assert {"p@5", "r@10", "f1@5", "map", "rare/map", "frequent/p@5"} <= set(metrics)
    state = torch.load(tmp_path / "ml" / "last.pt", weights_only=True)
    assert int(state["losses"]["0.rule.pos_count"].max()) >= 1                # the class state advanced
    test = evaluate(recipe, tmp_path / "ml" / "last.pt", split="test", device="cpu")
    assert 0 <= test["map"] <= 100
    ft = load_recipe("mlimages/scenes_finetune", tiny_scenes(
        "mlimages/scenes_finetune", "trainer.max_steps=2",
        f"model.backbone.pretrained_path={tmp_path / 'ml' / 'last.pt'}",
        "trainer.optimizer.lr_mult={backbone.conv1.*: 0, backbone.layer1.*: 0}"))
    train(ft, tmp_path / "ft", out=lambda _: None)
    before = state["model"]["backbone.layer1.0.conv2.weight"]
    after = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["model"]
    torch.testing.assert_close(after["backbone.layer1.0.conv2.weight"], before)     # frozen, from the ML run
    assert not torch.equal(after["backbone.layer4.0.conv2.weight"], state["model"]["backbone.layer4.0.conv2.weight"])
    assert 0 <= evaluate(ft, tmp_path / "ft" / "last.pt", split="test", device="cpu")["top1"] <= 100


@pytest.mark.slow
def test_the_demo_runs_end_to_end_at_toy_size(registries, tmp_path, monkeypatch, capsys):
    from fusedembed_mlimages import demo

    monkeypatch.setenv("FUSEDEMBED_DATA", str(tmp_path / "data"))      # the scenes cache of this test
    threads = torch.get_num_threads()
    try:
        assert demo.main(["--quick", "--device", "cpu", "--run-dir", str(tmp_path / "demo")]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    report = (tmp_path / "demo" / "report.md").read_text()
    for name in ["label frequency (baseline)", *demo.LOSSES, "from scratch"]:
        assert name in report
    assert "| rarest third (19 classes) |" in report and "- Transfer" in report and "- Fighting imbalance" in report
    assert "| majority class (baseline) |" in printed and (tmp_path / "demo" / "ap_vs_frequency.png").is_file()

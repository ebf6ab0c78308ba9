"""The full recipes and components against the authors' MatConvNet code (layumi/Image-Text-Embedding)."""

import json

import pytest
import torch
from fusedembed_dualpath.datasets import ImageTransform, authors_tokens
from fusedembed_dualpath.evaluator import RetrievalEvaluator
from fusedembed_dualpath.splits import coco_split, flickr30k_split
from fusedembed_dualpath.splits import main as splits_main
from PIL import Image

from fusedembed import load_recipe
from fusedembed.config import stage_recipes
from fusedembed.data import Vocab
from fusedembed.trainer.optim import lr_multiplier

# (dropout, Stage I epochs, Stage II epochs, Stage II LR milestones, rank : image CE : text CE, L)
AUTHORS = {"flickr30k": (0.75, 240, 60, [40], (2.0, 1.0, 0.1), 32),
           "coco": (0.5, 90, 21, [15, 20], (2.0, 1.0, 0.1), 32),
           "cuhk_pedes": (0.8, 180, 61, [40], (2.0, 1.0, 0.5), 56)}


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_full_recipes_train_as_the_authors(registries, name):
    dropout, epochs1, epochs2, milestones, weights, window = AUTHORS[name]
    recipe = load_recipe(f"dualpath/{name}")
    (_, one), (_, two) = stage_recipes(recipe)
    assert one.model["dropout"] == one.model["text_backbone"]["dropout"] == dropout
    assert one.model["max_len"] == one.model["text_backbone"]["max_len"] == window
    assert one.model["test_feature"] == "bn"
    assert one.trainer.lr == 0.1 and one.trainer.batch_size == 32              # on mean losses
    assert one.trainer.epochs == epochs1 and one.trainer.scheduler.name == "constant"
    assert one.model["image_bn_momentum"] == 0.0                                # ResNet BN frozen in Stage I
    assert all(loss.get("reduction") == "mean" for s in (one, two) for loss in s.losses)
    assert two.trainer.epochs == epochs2 and two.trainer.scheduler.milestones == milestones
    rank, inst = two.losses
    assert (rank["weight"], inst["weight"] * inst["image_weight"], inst["weight"] * inst["text_weight"]) == weights
    assert rank["margin"] == 1.0
    assert rank["negatives"] == ("random" if name == "cuhk_pedes" else "candidates")
    assert recipe.data.train["text"] == "authors"


def _matconvnet_resnet50_params(backbone):
    """(torchvision name, kind) in MatConvNet's imagenet-resnet-50-dag order: conv1 filter and
    bias (the torchvision conv1 has no bias), then per BN'd conv: filter, BN scale, shift, moments."""
    out = [("conv1.weight", "filter"), (None, "bias")]
    for name, m in backbone.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            out += [(f"{name}.weight", "scale"), (f"{name}.bias", "shift"), (name, "moments")]
        elif isinstance(m, torch.nn.Conv2d) and name != "conv1":
            out.append((f"{name}.weight", "filter"))
    return out


def test_stage_two_lr_multipliers_reproduce_the_authors_alternation(registries):
    lr_mult = stage_recipes(load_recipe("dualpath/coco"))[1][1].trainer.optimizer.lr_mult
    momentum = stage_recipes(load_recipe("dualpath/coco"))[1][1].model["image_bn_momentum"]
    backbone = registries.build("backbone", "resnet50")
    params = _matconvnet_resnet50_params(backbone)
    assert len(params) == 213                       # "for i = 1:213 %img cnn" in *_Rankloss.m
    names = {f"image.backbone.{n}" for n, _ in backbone.named_parameters()}
    for i, (name, kind) in enumerate(params, 1):
        authors = 1e-4 if i == 1 else (0.02 if i % 2 == 0 else 0.001)
        if name is None:
            continue
        ours = momentum if kind == "moments" else lr_multiplier(f"image.backbone.{name}", lr_mult)
        assert ours == authors, (i, name, kind)
        names.discard(f"image.backbone.{name}")
    assert not names                                # every parameter of the CNN is covered
    assert lr_multiplier("text.embed.weight", lr_mult) == 0.001 and lr_multiplier("image.head.0.weight", lr_mult) == 1


def test_authors_tokens_split_keep_case_and_coco_splits_question_marks():
    assert authors_tokens("A man-made (red) kite, flying. Why?") == ["A", "man", "made", "red", "kite", "flying",
                                                                    "Why?"]
    assert authors_tokens("A man-made (red) kite, flying. Why?", question_mark=True)[-1] == "Why"


def _images(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB", (20, 12), (200, 10, 10)).save(root / n)


def test_authors_text_drops_words_word2vec_lacks_before_the_cut(registries, tmp_path):
    names = ["0.jpg", "1.jpg"]
    _images(tmp_path / "img", names)
    doc = {"images": [{"filename": "0.jpg", "split": "train", "sentences": [{"raw": "A zorblax Dog, running."}]},
                      {"filename": "1.jpg", "split": "test", "sentences": [{"raw": "a Dog (zorblax) sits"}]}]}
    (tmp_path / "d.json").write_text(json.dumps(doc))
    (tmp_path / "w2v.txt").write_text("4 2\nA 1 0\nDog 0 1\nrunning 1 1\nsits 0.5 0.5\n")
    cfg = {"name": "dualpath/flickr30k", "json_path": str(tmp_path / "d.json"), "image_root": str(tmp_path / "img"),
           "image_size": 16, "view": "pair", "text": "authors", "word2vec_path": str(tmp_path / "w2v.txt"),
           "vocab_path": str(tmp_path / "vocab.json")}
    train = registries.build("dataset", cfg, split="train")
    # The dictionary: training words word2vec has, case kept ("sits" is only in the test split).
    assert sorted(train.vocab.itos[2:]) == ["A", "Dog", "running"]
    assert train.vocab.decode(train[0]["tokens"]) == ["A", "Dog", "running"]     # "zorblax" dropped, no <unk>
    test = registries.build("dataset", cfg, split="test")
    assert test.vocab.decode(test[0]["tokens"]) == ["Dog"]     # "a" is not "A"; "sits" not a training word
    assert Vocab.load(tmp_path / "vocab.json") == train.vocab
    with pytest.raises(ValueError, match="text must be one of .* got 'lower'"):
        registries.build("dataset", {**cfg, "text": "lower"}, split="train")


def test_training_crops_follow_vl_imreadjpeg():
    t = ImageTransform(224, train=True)
    torch.manual_seed(0)
    boxes = [t.crop_box(300, 400) for _ in range(2000)]
    sides = torch.tensor([(h, w) for _, _, h, w in boxes], dtype=torch.float64)
    aspect = sides[:, 1] / sides[:, 0]
    assert aspect.min() >= 3 / 4 - 0.01 and aspect.max() <= 4 / 3 + 0.01 and aspect.max() > 1.3
    # The side fraction of the largest fitting crop is in [0.8, 1]: the area fraction in [0.64, 1].
    fit = torch.minimum(400 / aspect.sqrt(), 300 * aspect.sqrt())       # the largest square-ish side
    frac = (sides[:, 0] * sides[:, 1]).sqrt() / fit
    assert frac.min() > 0.79 and frac.max() <= 1.01 and frac.min() < 0.82
    assert all(0 <= top <= 300 - h and 0 <= left <= 400 - w for top, left, h, w in boxes)
    out = t(torch.rand(3, 300, 400))
    assert out.shape == (3, 224, 224)
    with pytest.raises(ValueError, match=r"crop must be \[min, max\] .* got \[0.0, 1.0\]"):
        ImageTransform(224, train=True, crop=(0.0, 1.0))


def test_authors_splits_from_karpathy_json_and_flickr8k_lists(tmp_path):
    names = [f"{i}.jpg" for i in (101, 102, 103, 104, 105)]
    (tmp_path / "k.json").write_text(json.dumps({"images": [{"filename": n, "split": "train", "sentences": []}
                                                            for n in names]}))
    (tmp_path / "test8k.txt").write_text("103_abcdef0123.jpg\n999_abc.jpg\n")
    (tmp_path / "dev8k.txt").write_text("105_abcdef0123.jpg\n")
    counts = splits_main(["flickr30k", str(tmp_path / "k.json"), str(tmp_path / "out"), "--flickr8k-test",
                          str(tmp_path / "test8k.txt"), "--flickr8k-dev", str(tmp_path / "dev8k.txt")])
    assert counts == {"train": 3, "val": 1, "test": 1}
    assert (tmp_path / "out" / "test.txt").read_text() == "103.jpg\n"
    assert (tmp_path / "out" / "train.txt").read_text().split() == ["101.jpg", "102.jpg", "104.jpg"]
    assert flickr30k_split(names, {"101"}, set())["test"] == ["101.jpg"]
    coco = coco_split([f"{i}.jpg" for i in range(30)], seed=1, held_out=10)
    assert [len(coco[k]) for k in ("train", "val", "test")] == [20, 5, 5]
    assert not set(coco["val"]) & set(coco["test"]) and coco == coco_split([f"{i}.jpg" for i in range(30)], 1, 10)
    with pytest.raises(SystemExit):
        splits_main(["flickr30k", str(tmp_path / "k.json"), str(tmp_path / "o2")])


def test_map_and_the_authors_median_rank_next_to_vse_plus_plus():
    img = torch.eye(4)
    txt = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0.9, 0.5]])
    g = torch.tensor([0, 1, 2, 3])
    m = RetrievalEvaluator().metrics(img, txt, g)
    # t2i ranks 1, 2, 1, 2: VSE++'s floor of the median 1, the authors' first K with CMC > 0.5: 2.
    assert m["t2i_medr"] == 1.0 and m["t2i_medr_authors"] == 2.0
    # compute_AP_short.m with one relevant item: rank 1 -> 1; rank 2 -> (0/1 + 1/2) / 2.
    assert m["t2i_map"] == pytest.approx(100 * (1 + 0.25 + 1 + 0.25) / 4)
    coco = RetrievalEvaluator(protocol="coco", folds=2).metrics(img, txt, g)
    assert coco["5k_t2i_map"] == pytest.approx(m["t2i_map"]) and coco["5k_t2i_medr_authors"] == 2.0
    assert coco["1k_t2i_map"] == pytest.approx(100 * (1 + 0.25) / 2)          # each fold: ranks 1 and 2

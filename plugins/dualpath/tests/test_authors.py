"""The full recipes and components against the authors' MatConvNet code (layumi/Image-Text-Embedding)."""

import json

import pytest
import torch
from fusedembed_dualpath.datasets import ImageTransform, authors_tokens
from fusedembed_dualpath.datasets import main as datasets_main
from fusedembed_dualpath.evaluator import RetrievalEvaluator
from fusedembed_dualpath.shift import fit_lengths, place, random_offsets
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
    assert all(loss.get("reduction") in ("mean", "batch") for s in (one, two) for loss in s.losses)
    assert two.trainer.epochs == epochs2 and two.trainer.scheduler.milestones == milestones
    rank, inst = two.losses
    assert (rank["weight"], inst["weight"] * inst["image_weight"], inst["weight"] * inst["text_weight"]) == weights
    assert rank["margin"] == 1.0
    if name == "cuhk_pedes":
        assert rank["name"] == "dualpath/bidir_ranking" and rank["negatives"] == "random"
    else:   # RankLoss.m on the batch halves, hardest of 8 x 32 = 256 mined captions
        assert rank["name"] == "dualpath/pair_ranking" and rank["reduction"] == "batch"
        assert two.data.train["candidates_per_item"] * two.trainer.batch_size == 256
        assert "candidates_per_item" not in one.data.train
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
    # The wrong file: too few images for the authors' 10,000 held out, or no JSON at all.
    from fusedembed.data import DataError
    with pytest.raises(DataError, match=r"k.json: coco: expected more than the 10,000 images .* got 5"):
        splits_main(["coco", str(tmp_path / "k.json"), str(tmp_path / "o3")])
    (tmp_path / "bad.json").write_text("{images: []}")
    with pytest.raises(DataError, match=r"bad.json:line 1 column 2: invalid JSON"):
        splits_main(["coco", str(tmp_path / "bad.json"), str(tmp_path / "o4")])


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


def test_pair_ranking_is_rankloss_m(registries):
    torch.manual_seed(0)
    img, txt = (torch.nn.functional.normalize(torch.randn(6, 4), dim=1) for _ in range(2))
    loss = registries.build("loss", {"name": "dualpath/pair_ranking"})
    hand = sum(max(0.0, 1 - float(img[i] @ txt[i]) + float(img[i] @ txt[3 + i]))
               + max(0.0, 1 - float(img[i] @ txt[i]) + float(txt[i] @ img[3 + i])) for i in range(3)) / 6
    assert loss(img, txt).item() == pytest.approx(hand, rel=1e-5)
    same = loss(img, txt, torch.tensor([0, 1, 2, 0, 5, 6])).item()          # image 3 is anchor 0's instance
    assert same == pytest.approx(hand - max(0.0, 1 - float(img[0] @ txt[0]) + float(txt[0] @ img[3])) / 6, rel=1e-5)


def test_model_mines_the_hardest_candidate_caption_with_the_current_model(registries):
    torch.manual_seed(0)
    model = registries.build("model", {
        "name": "dualpath", "dim": 16, "max_len": 8, "image_backbone": {"name": "tiny_cnn", "width": 4, "depth": 2},
        "text_backbone": {"name": "textcnn", "vocab_size": 30, "max_len": 8, "word_dim": 8, "widths": [8],
                          "blocks": [1], "strides": [1], "first_mids": None, "fc_dim": 16}}).train()
    images, instance = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    candidates = torch.randint(2, 30, (4, 3, 5))
    candidate_instance = torch.tensor([[0, 5, 6], [7, 1, 8], [9, 10, 11], [12, 13, 14]])
    flat, flat_ids = candidates.flatten(0, 1), candidate_instance.flatten()
    torch.manual_seed(1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    bns[0].eval()                                            # as trainer.bn_eval leaves it
    mined, mined_ids = model.hardest_candidates(images[:2], instance[:2], flat, flat_ids)
    assert model.training and [m.training for m in bns] == [False] + [True] * (len(bns) - 1)
    model.eval()
    with torch.no_grad():
        q = torch.nn.functional.normalize(model.image.features(images[:2])[1], dim=1)
        torch.manual_seed(1)
        c = model.text.features(place(flat, fit_lengths(flat, None, 8),
                                      random_offsets(fit_lengths(flat, None, 8), 8), 8))[1]
        scores = q @ torch.nn.functional.normalize(c, dim=1).T
    scores[0, flat_ids == 0] = scores[1, flat_ids == 1] = float("-inf")      # never the anchor's own
    assert torch.equal(mined, flat[scores.argmax(1)]) and torch.equal(mined_ids, flat_ids[scores.argmax(1)])
    model.train()
    batch = {"image": images, "tokens": torch.randint(2, 30, (4, 4)), "instance": instance,
             "candidate_tokens": candidates, "candidate_instance": candidate_instance}
    out = model(batch)
    assert out["text_instance"][:2].tolist() == [0, 1] and set(out["text_instance"][2:].tolist()) <= set(
        flat_ids.tolist()) - {0, 1}
    out["text_features"][2:].sum().backward()                # the mined captions train with gradient
    assert model.text.embed.weight.grad.abs().sum() > 0


def test_candidates_are_random_captions_of_other_images(registries, tmp_path):
    names = [f"{i}.jpg" for i in range(4)]
    _images(tmp_path / "img", names)
    doc = {"images": [{"filename": n, "split": "train", "sentences": [{"raw": f"w{i} x", "tokens": [f"w{i}", "x"]}]}
                      for i, n in enumerate(names)]}
    (tmp_path / "d.json").write_text(json.dumps(doc))
    data = registries.build("dataset", {"name": "dualpath/flickr30k", "json_path": str(tmp_path / "d.json"),
                                        "image_root": str(tmp_path / "img"), "image_size": 16,
                                        "candidates_per_item": 6}, split="train")
    item = data[2]
    assert item["candidate_tokens"].shape == (6, 32) and 2 not in item["candidate_instance"].tolist()
    words = [data.vocab.decode(t) for t in item["candidate_tokens"]]
    assert words == [[f"w{i}", "x"] for i in item["candidate_instance"].tolist()]     # each its image's caption
    assert torch.equal(data[2]["candidate_instance"], item["candidate_instance"])      # seeded by item and epoch
    data.set_epoch(1)
    assert len(data) == 4 and not torch.equal(data[2]["candidate_instance"], item["candidate_instance"])  # new draw


def test_flickr_recipe_trains_both_stages_with_mined_negatives_on_a_fixture(installed_registries, tmp_path):
    from fusedembed.trainer import train

    names = [f"{i}.jpg" for i in range(8)]
    _images(tmp_path / "img", names)
    words = ["A", "red", "Dog", "cat", "runs", "sits", "blue", "kite"]
    doc = {"images": [{"filename": n, "split": "train", "sentences": [
        {"raw": f"{words[i]} {words[(i + 1) % 8]}, {words[(i + 3) % 8]}."}, {"raw": f"{words[i]} zorblax"}]}
        for i, n in enumerate(names)]}
    (tmp_path / "d.json").write_text(json.dumps(doc))
    (tmp_path / "w2v.txt").write_text("".join(f"{w} " + " ".join(str((i * 7 + j) % 5 - 2.0) for j in range(8)) + "\n"
                                              for i, w in enumerate(words)))
    for split, items in (("train", names), ("val", names[:4]), ("test", names[4:])):
        (tmp_path / f"{split}.txt").write_text("\n".join(items) + "\n")
    data = [f"data.{split}.{k}={v}" for split in ("train", "val", "test") for k, v in (
        ("json_path", tmp_path / "d.json"), ("image_root", tmp_path / "img"), ("vocab_path", tmp_path / "vocab.json"),
        ("word2vec_path", tmp_path / "w2v.txt"), ("image_size", 16), ("split_lists.train", tmp_path / "train.txt"),
        ("split_lists.val", tmp_path / "val.txt"), ("split_lists.test", tmp_path / "test.txt"))]
    overrides = [*data, "model.dim=16", "model.image_backbone={name: tiny_cnn, width: 4, depth: 2}",
                 f"model.text_backbone.word2vec_path={tmp_path / 'w2v.txt'}", f"model.text_backbone.vocab_path={tmp_path / 'vocab.json'}",
                 "model.text_backbone.word_dim=8", "model.text_backbone.widths=[8]", "model.text_backbone.blocks=[1]",
                 "model.text_backbone.strides=[1]", "model.text_backbone.first_mids=null", "model.text_backbone.fc_dim=16",
                 "losses.0.num_classes=8", "losses.0.dim=16", "stages.1.losses.1.num_classes=8", "stages.1.losses.1.dim=16",
                 "stages.0.trainer.epochs=1", "stages.1.trainer.epochs=1", "trainer.batch_size=4",
                 "trainer.eval_batch_size=4", "trainer.log_every=1", "stages.1.data.train.candidates_per_item=2"]
    with installed_registries.active():
        datasets_main(["dualpath/flickr30k", *overrides])          # writes the vocabulary, as the README says
        assert set(Vocab.load(tmp_path / "vocab.json").itos[2:]) == set(words)     # "zorblax" has no vector
        metrics = train(load_recipe("dualpath/flickr30k", overrides), tmp_path / "run", out=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    stage2 = [r for r in rows if r.get("stage") == "stage2" and "loss/pair_ranking" in r]
    assert len(stage2) == 2 and all(r["loss/pair_ranking"] >= 0 for r in stage2)
    assert {"i2t_map", "t2i_medr_authors", "rsum"} <= set(metrics)

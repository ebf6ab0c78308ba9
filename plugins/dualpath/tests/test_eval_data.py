"""Evaluator, chance and baseline figures, report table, and the real-data readers."""

import json

import pytest
import torch
from fusedembed_dualpath.evaluator import RetrievalEvaluator
from fusedembed_dualpath.report import chance_metrics, table
from PIL import Image
from torch.utils.data import DataLoader

from fusedembed.data import Vocab, collate


def test_evaluator_metrics_on_a_hand_made_case():
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0.9, 0.1], [0, 0, 1.0]])
    g = torch.tensor([0, 1, 2, 2])          # caption 2 of image 2 looks like image 1
    m = RetrievalEvaluator().metrics(img, txt, g)
    assert m["i2t_r1"] == 100.0              # every image's best caption is its own
    assert m["t2i_r1"] == pytest.approx(75.0) and m["t2i_r5"] == 100.0
    assert m["rsum"] == pytest.approx(3 * 100 + 75 + 100 + 100)
    coco = RetrievalEvaluator(protocol="coco", folds=1).metrics(img, txt, g)
    assert coco["1k_t2i_r1"] == coco["5k_t2i_r1"] == pytest.approx(75.0)
    with pytest.raises(ValueError, match="protocol must be one of .* got 'flickr'"):
        RetrievalEvaluator(protocol="flickr")


def test_identity_protocol_counts_any_image_of_the_person():
    # Images 0 and 1 show person 7, image 2 person 9. Caption 0 (of image 0) looks most like
    # image 1: a miss by image, a hit by identity; caption 2 (person 9) stays a miss.
    img = torch.eye(3)
    txt = torch.tensor([[0.4, 1.0, 0], [0, 1.0, 0.2], [1.0, 0, 0.5]])
    g = torch.tensor([0, 1, 2])
    by_image = RetrievalEvaluator().metrics(img, txt, g)
    by_person = RetrievalEvaluator(protocol="identity").metrics(img, txt, g, image_labels=torch.tensor([7, 7, 9]))
    assert by_image["t2i_r1"] == pytest.approx(100 / 3)
    assert by_person["t2i_r1"] == pytest.approx(200 / 3) and by_person["t2i_r5"] == 100.0
    # i2t: image 0's best caption of person 7 (caption 0, 0.4) ranks behind caption 2 (1.0);
    # images 1 and 2 rank a caption of their person first.
    assert by_person["i2t_r1"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="protocol 'identity' needs the images' identities"):
        RetrievalEvaluator(protocol="identity").metrics(img, txt, g)
    with pytest.raises(TypeError, match="protocol 'identity' needs a dataset with per-image identities"):
        RetrievalEvaluator(protocol="identity")(None, DataLoader([1, 2]), device="cpu")


def test_chance_is_the_exact_expectation():
    g = torch.arange(10).repeat_interleave(5)          # 10 images, 5 captions each
    m = chance_metrics(g)
    assert m["t2i_r1"] == pytest.approx(10.0) and m["t2i_r10"] == pytest.approx(100.0)
    assert m["i2t_r1"] == pytest.approx(10.0)             # 5 of 50 captions on top
    assert m["i2t_r5"] == pytest.approx(100 * (1 - (45 * 44 * 43 * 42 * 41) / (50 * 49 * 48 * 47 * 46)))
    gen = torch.Generator().manual_seed(0)
    sims = [RetrievalEvaluator().metrics(torch.randn(10, 8, generator=gen), torch.randn(50, 8, generator=gen), g)
            for _ in range(50)]
    assert sum(s["i2t_r5"] for s in sims) / 50 == pytest.approx(m["i2t_r5"], abs=5)


def test_table_has_both_directions_and_rsum():
    m = chance_metrics(torch.arange(4).repeat_interleave(2))
    text = table([("chance", m)])
    assert "i2t R@1" in text and "t2i medr" in text and "rsum" in text and "| chance |" in text


def test_bow_cca_baseline_beats_chance_on_scenes(scenes_root):
    from fusedembed_dualpath.baseline import BowCCA

    from fusedembed.data import scenes

    common = dict(root=scenes_root, image_size=32, progress=False, workers=1, train_images=200)
    train = scenes("train", num_images=200, **common)
    test = scenes("test", num_images=50, **common)
    img, txt = BowCCA(dim=32, thumb=8, bins=4).fit(train).embed(test)
    m = RetrievalEvaluator().metrics(img, txt, test.caption_to_image)
    assert m["rsum"] > 2 * chance_metrics(test.caption_to_image)["rsum"]


def _images(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (20, 12), (10 * i, 0, 0)).save(root / name)


def test_karpathy_recipe_data_and_the_authors_split(registries, tmp_path):
    names = [f"{i}.jpg" for i in range(5)]
    _images(tmp_path / "img", names)
    split = ["train", "train", "train", "val", "test"]
    doc = {"images": [{"filename": n, "split": s, "sentences": [{"raw": f"a red dog {i}", "tokens": ["a", "red", "dog"]},
                                                                 {"raw": "two cats", "tokens": ["two", "cats"]}]}
                      for i, (n, s) in enumerate(zip(names, split))]}
    (tmp_path / "d.json").write_text(json.dumps(doc))
    cfg = {"name": "dualpath/flickr30k", "json_path": str(tmp_path / "d.json"), "image_root": str(tmp_path / "img"),
           "image_size": 16, "vocab_path": str(tmp_path / "vocab.json")}
    train = registries.build("dataset", cfg, split="train")
    item = train[0]
    assert item["image"].shape == (3, 16, 16) and train.num_images == 3 and len(train) == 3   # image view
    assert Vocab.load(tmp_path / "vocab.json") == train.vocab          # written for the TextCNN
    net = registries.build("backbone", {"name": "textcnn", "vocab_path": str(tmp_path / "vocab.json"), "widths": [4],
                                  "blocks": [1], "strides": [1], "first_mids": None, "fc_dim": 4})
    assert net.vocab_size == len(train.vocab)
    (tmp_path / "train.txt").write_text("4.jpg\n0.jpg\n")
    (tmp_path / "test.txt").write_text("3.jpg\n")
    lists = {"train": str(tmp_path / "train.txt"), "test": str(tmp_path / "test.txt")}
    authors = registries.build("dataset", {**cfg, "vocab_path": None, "split_lists": lists, "view": "pair"}, split="test")
    assert [p.rsplit("/", 1)[1] for p in authors.paths] == ["3.jpg"] and len(authors) == 2
    (tmp_path / "test.txt").write_text("9.jpg\n")
    with pytest.raises(ValueError, match=r"test.txt:line 1: image '9.jpg' is not in"):
        registries.build("dataset", {**cfg, "vocab_path": None, "split_lists": lists}, split="test")


def test_cuhk_pedes_instance_is_the_identity(registries, tmp_path):
    names = [f"p{i}.png" for i in range(4)]
    _images(tmp_path / "imgs", names)
    records = [{"split": "train", "file_path": n, "id": pid, "captions": [f"a man in a red coat {i}"],
                "processed_tokens": [["a", "man", "in", "a", "red", "coat"]]}
               for i, (n, pid) in enumerate(zip(names, [11, 11, 42, 42]))]
    (tmp_path / "reid_raw.json").write_text(json.dumps(records))
    data = registries.build("dataset", {"name": "dualpath/cuhk_pedes", "json_path": str(tmp_path / "reid_raw.json"),
                                  "image_root": str(tmp_path / "imgs"), "image_size": 16}, split="train")
    assert [data[i]["instance"] for i in range(4)] == [0, 0, 1, 1]
    assert [data[i]["image_index"] for i in range(4)] == [0, 1, 2, 3] and data.num_identities == 2
    # processed_tokens spelled as new sentences are tokenised (full-width "Ｍａｎ" was a word of its own).
    records[0]["processed_tokens"] = [["A", "Ｍａｎ", "in", "a", "red", "coat\u2019s"]]
    (tmp_path / "reid_raw.json").write_text(json.dumps(records))
    data = registries.build("dataset", {"name": "dualpath/cuhk_pedes", "json_path": str(tmp_path / "reid_raw.json"),
                                  "image_root": str(tmp_path / "imgs"), "image_size": 16}, split="train")
    assert data.vocab.decode(data.tokens_of(0)) == ["a", "man", "in", "a", "red", "coat's"]
    assert "ｍａｎ" not in data.vocab and data.vocab.decode(data.tokenize("A MAN")) == ["a", "man"]
    with pytest.raises(ValueError, match="no records of split 'test'"):
        registries.build("dataset", {"name": "dualpath/cuhk_pedes", "json_path": str(tmp_path / "reid_raw.json"),
                               "image_root": str(tmp_path / "imgs")}, split="test")


def test_identity_protocol_reads_the_pedes_identities(registries, tmp_path):
    # A model whose embeddings are all equal: pessimistic ties put every non-match first, so a
    # caption's rank is 1 + the images not counted as its match: 3 by image, 2 by person.
    names = [f"p{i}.png" for i in range(4)]
    _images(tmp_path / "imgs", names)
    records = [{"split": "test", "file_path": n, "id": pid, "captions": [f"a man in a red coat {i}"]}
               for i, (n, pid) in enumerate(zip(names, [11, 11, 42, 42]))]
    (tmp_path / "reid_raw.json").write_text(json.dumps(records))
    data = registries.build("dataset", {"name": "dualpath/cuhk_pedes", "json_path": str(tmp_path / "reid_raw.json"),
                                  "image_root": str(tmp_path / "imgs"), "image_size": 16, "view": "pair"},
                      split="test")

    class Constant(torch.nn.Module):
        def forward(self, batch):
            key, n = ("image", len(batch["image"])) if "image" in batch else ("text", len(batch["tokens"]))
            return {f"{key}_embedding": torch.ones(n, 4)}

    model = Constant()
    loader = DataLoader(data, batch_size=2, collate_fn=collate)
    by_person = RetrievalEvaluator(protocol="identity", ks=(2, 3))(model, loader, device="cpu")
    by_image = RetrievalEvaluator(ks=(3, 4))(model, loader, device="cpu")
    assert by_person["t2i_r3"] == 100.0 and by_person["t2i_r2"] == 0.0
    assert by_image["t2i_r4"] == 100.0 and by_image["t2i_r3"] == 0.0

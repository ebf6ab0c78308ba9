"""The generator learns, its recipes build and train through the trainer, its region data."""

import json

import pytest
import torch
from fusedembed_alignment.generator.baseline import consensus_caption, nearest_neighbour_captions
from fusedembed_alignment.generator.datasets import RegionSnippets, read_snippets, truth_snippets
from fusedembed_alignment.generator.evaluator import CaptionEvaluator, describe, references
from fusedembed_alignment.generator.metrics import bleu, ptb_tokenize
from fusedembed_alignment.generator.model import CaptionNLL, MultimodalRNN

from fusedembed import build, load_recipe
from fusedembed.data import collate, scenes


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory):
    return tmp_path_factory.mktemp("scenes")


def test_overfits_20_captions_to_bleu4_above_0_9(scenes_root):
    ds = scenes("train", root=scenes_root, num_images=20, view="pair", progress=False, workers=1, image_size=32)
    items = [ds[j] for j in range(0, ds.num_captions, 5)]           # caption 0 of each of the 20 images
    batch = collate(items)
    torch.manual_seed(0)
    model = MultimodalRNN({"name": "tiny_cnn", "width": 8, "depth": 3}, vocab_size=len(ds.vocab), hidden=128,
                          dropout=0.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3, alpha=0.99)
    loss_fn = CaptionNLL()
    for _ in range(250):
        loss = loss_fn(**model(batch))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 5.0)
        opt.step()
    model.eval()
    ids, lengths, _ = model.generate(batch["image"], beam_size=1)
    hyps = {k: " ".join(ds.vocab.decode(ids[k, :lengths[k]].tolist())) for k in range(20)}
    refs = {k: [ptb_tokenize(it["caption"])] for k, it in enumerate(items)}
    assert bleu(refs, hyps)[3] > 0.9, (hyps, refs)


def test_scenes_recipe_trains_through_the_trainer_and_evaluates(scenes_root, tmp_path):
    from fusedembed.trainer import train

    recipe = load_recipe("alignment/generator_scenes", [
        f"data.train.root={scenes_root}", "data.train.num_images=30", f"data.val.root={scenes_root}",
        "data.val.num_images=10", "data.val.train_images=30", "data.train.workers=1",
        "trainer.max_steps=3", "trainer.batch_size=20", "trainer.epochs=1", "model.hidden=32",
        "model.image_backbone.width=8", "trainer.device=cpu", "model.vocab_size=76"])
    metrics = train(recipe, tmp_path, out=lambda _: None)
    assert {"BLEU-4", "CIDEr-D", "ROUGE-L"} <= set(metrics)
    assert (tmp_path / "last.pt").is_file()


@pytest.mark.parametrize("name", ["generator_scenes", "generator_scenes_regions", "generator_flickr8k",
                                  "generator_flickr30k", "generator_coco"])
def test_recipes_load(name):
    recipe = load_recipe(f"alignment/{name}")
    assert recipe.trainer.optimizer.name == "rmsprop" and recipe.trainer.optimizer.alpha == 0.999
    assert recipe.trainer.batch_size == 100 and recipe.trainer.grad_clip_value == 5.0
    if "scenes" in name:
        assert isinstance(build("model", recipe.model), MultimodalRNN)


def test_truth_snippets_are_runs_of_words_on_their_object(scenes_root):
    base = scenes("test", root=scenes_root, num_images=8, progress=False, workers=1, train_images=30)
    records = truth_snippets(base)
    assert records
    for rec in records[:40]:
        i = rec["image"]
        boxes = base.boxes(i).tolist()
        assert rec["box"] in boxes and rec["snippet"]
        # The snippet is a contiguous run of one of the image's captions.
        assert any(f" {rec['snippet']} " in f" {' '.join(base.vocab.decode(base.tokens_of(j).tolist()))} "
                   for j in base.captions_of(i))
    regions = RegionSnippets(base, records, crop_size=16, view="image")
    item = regions[0]
    assert item["image"].shape == (3, 16, 16) and item["caption"] in regions.texts


def test_snippets_file_round_trip_and_errors(scenes_root, tmp_path):
    base = scenes("test", root=scenes_root, num_images=8, progress=False, workers=1, train_images=30)
    records = truth_snippets(base)
    path = tmp_path / "snippets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert read_snippets(path) == records
    path.write_text('{"image": 0, "box": [5, 5, 2, 9], "snippet": "a red circle"}\n')
    with pytest.raises(Exception, match=r"line 1.*x1 > x0 and y1 > y0, got \[5.0, 5.0, 2.0, 9.0\]"):
        read_snippets(path)


def test_consensus_caption_and_nearest_neighbour(scenes_root):
    assert consensus_caption(["a red circle", "a red circle left of a square", "two blue squares"]) in (
        "a red circle", "a red circle left of a square")
    from fusedembed.trainer import eval_loader

    train_set = scenes("train", root=scenes_root, num_images=30, view="image", progress=False, workers=1)
    torch.manual_seed(0)
    model = MultimodalRNN({"name": "tiny_cnn", "width": 8, "depth": 2}, vocab_size=len(train_set.vocab), hidden=16)
    recipe = load_recipe("alignment/generator_scenes")
    loader = eval_loader(train_set, recipe)
    # Every training image's nearest neighbour among the training images is itself.
    nn_caps = nearest_neighbour_captions(model, loader, loader, device="cpu")
    refs = references(train_set)
    assert all(nn_caps[i] in refs[i] for i in refs)
    hyps = describe(model, loader, device="cpu", beam_size=2, max_len=5)
    assert sorted(hyps) == sorted(refs)
    scores = CaptionEvaluator(beam_size=2, max_len=5, meteor=False, prefix="beam2/")(model, loader, device="cpu")
    assert set(scores) == {f"beam2/{k}" for k in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")}
    # Decoding options are refused when the evaluator is built, not after training.
    for bad, message in (({"beam_size": 0}, "beam_size must be >= 1, got 0"), ({"max_len": 0}, "max_len must be >= 1"),
                         ({"length_norm": -1.0}, "length_norm must be >= 0, got -1.0")):
        with pytest.raises(ValueError, match=f"captions evaluator: {message}"):
            CaptionEvaluator(**bad)


def test_demo_runs_end_to_end_at_toy_size(scenes_root, tmp_path, monkeypatch):
    from fusedembed_alignment.generator import demo

    monkeypatch.setenv("FUSEDEMBED_DATA", str(scenes_root.parent / "demo_data"))
    lines = []
    results = demo.run(tmp_path / "run", train_images=20, test_images=6, epochs=1, meteor=False,
                       overrides=["trainer.log_every=1000"], out=lines.append)
    rows = ["greedy", "beam search, k = 3", "nearest neighbour (CNN features)"]
    for kind in ("images", "regions"):
        assert list(results[kind]) == rows
        assert all(0 <= m["BLEU-4"] <= 1 and m["CIDEr-D"] >= 0 for m in results[kind].values())
    report = (tmp_path / "run" / "report.md").read_text()
    assert report.count("| greedy |") == 2 and "nearest neighbour" in report
    pytest.importorskip("matplotlib")
    assert (tmp_path / "run" / "images_captions.png").is_file()
    assert (tmp_path / "run" / "regions_captions.png").is_file()


def test_karpathy_json_vocabulary_of_words_seen_5_times(tmp_path):
    from fusedembed_alignment.generator.datasets import generator_karpathy
    from PIL import Image

    images = []
    for k, split in enumerate(["train", "train", "test"]):
        Image.new("RGB", (20, 16), (40 * k, 90, 200)).save(tmp_path / f"{k}.png")
        sentences = [{"raw": "A dog runs.", "tokens": ["a", "dog", "runs"]}] * 3 + \
            [{"raw": "A cat sits.", "tokens": ["a", "cat", "sits"]}] * 2
        images.append({"filename": f"{k}.png", "split": split, "sentences": sentences})
    (tmp_path / "d.json").write_text(json.dumps({"images": images}))
    vocab_path = tmp_path / "v" / "vocab.json"
    with pytest.raises(FileNotFoundError, match="vocab_path .* does not exist"):
        MultimodalRNN({"name": "tiny_cnn", "width": 4, "depth": 1}, vocab_path=str(vocab_path))
    train = generator_karpathy("train", str(tmp_path / "d.json"), str(tmp_path), vocab_path=str(vocab_path),
                               image_size=16)
    # train captions: a x10, dog x6, runs x6, cat x4, sits x4 -> cat and sits fall below 5
    assert train.vocab.itos[2:] == ["a", "dog", "runs"] and vocab_path.is_file()
    test = generator_karpathy("test", str(tmp_path / "d.json"), str(tmp_path), vocab_path=str(vocab_path),
                              image_size=16, view="image")
    assert test.vocab == train.vocab and test.num_images == 1 and test[0]["image"].shape == (3, 16, 16)
    model = MultimodalRNN({"name": "tiny_cnn", "width": 4, "depth": 1}, vocab_path=str(vocab_path), hidden=8)
    assert model.vocab_size == 5
    batch = collate([train[3], train[4]])                  # "a cat sits": cat, sits are <unk>, dropped
    assert model(batch)["caption_targets"].tolist() == [[2, 0], [2, 0]]


def test_describe_boxes_matches_the_region_dataset(scenes_root):
    from fusedembed_alignment.generator.evaluator import describe_boxes

    from fusedembed.trainer import eval_loader

    base = scenes("test", root=scenes_root, num_images=8, progress=False, workers=1, train_images=30)
    regions = RegionSnippets(base, truth_snippets(base), crop_size=16, view="image")
    torch.manual_seed(0)
    model = MultimodalRNN({"name": "tiny_cnn", "width": 8, "depth": 2}, vocab_size=len(base.vocab), hidden=16)
    from_dataset = describe(model, eval_loader(regions, load_recipe("alignment/generator_scenes")), device="cpu",
                            beam_size=2, max_len=6)
    mine = [r for r, (i, _) in enumerate(regions.regions) if i == 3]
    boxes = [regions.regions[r][1] for r in mine]
    got = describe_boxes(model, base.load_image(3), boxes, base.vocab, crop_size=16, beam_size=2, max_len=6)
    assert got == [from_dataset[r] for r in mine] and len(got) >= 1

import itertools
import json

import numpy as np
import pytest
import torch
from fusedembed_alignment.align import decode, snippets
from fusedembed_alignment.data import karpathy_boxes, read_detections
from PIL import Image

import fusedembed
from fusedembed.data import DataError


def brute_decode(unary, beta):
    N, M = unary.shape
    best, arg = -float("inf"), None
    for path in itertools.product(range(M), repeat=N):
        e = sum(float(unary[j, a]) for j, a in enumerate(path)) + beta * sum(
            path[j] == path[j + 1] for j in range(N - 1))
        if e > best + 1e-9:
            best, arg = e, path
    return best, arg


@pytest.mark.parametrize("beta", [-1.0, 0.0, 0.7, 3.0])
def test_decode_is_the_best_path(beta):
    g = torch.Generator().manual_seed(1)
    regions, words = torch.randn(3, 3, 4, generator=g), torch.randn(3, 4, 4, generator=g)
    lengths, counts = torch.tensor([4, 3, 1]), torch.tensor([3, 2, 3])
    assignment, energy = decode(regions, words, beta, counts, lengths)
    for b in range(3):
        n, m = int(lengths[b]), int(counts[b])
        unary = words[b, :n] @ regions[b, :m].t()
        best, _ = brute_decode(unary, beta)
        assert float(energy[b]) == pytest.approx(best, abs=1e-4)
        path = assignment[b, :n].tolist()
        assert float(unary[range(n), path].sum()) + beta * sum(
            path[j] == path[j + 1] for j in range(n - 1)) == pytest.approx(best, abs=1e-4)
        assert (assignment[b, n:] == -1).all() and max(path) < m


def test_snippets_are_runs_with_their_scores_and_words():
    regions = torch.eye(2)[None]                 # region i points along axis i
    words = torch.tensor([[[1.0, 0], [2.0, 0], [0, 3.0]]])
    assignment, _ = decode(regions, words, 0.0)
    assert assignment.tolist() == [[0, 0, 1]]
    runs = snippets(regions, words, assignment, [["red", "circle", "square"]])[0]
    assert [(s.start, s.end, s.region, s.words) for s in runs] == [(0, 2, 0, "red circle"), (2, 3, 1, "square")]
    assert [s.score for s in runs] == [3.0, 3.0]


def _karpathy(tmp_path, detections):
    (tmp_path / "images").mkdir()
    images = []
    for i, (w, h) in enumerate([(40, 20), (30, 30)]):
        Image.new("RGB", (w, h), (i * 100, 50, 50)).save(tmp_path / "images" / f"im{i}.png")
        images.append({"filename": f"im{i}.png", "split": "train",
                       "sentences": [{"tokens": ["A", "red", "dog"], "raw": "A red dog"}] * 5})
    (tmp_path / "data.json").write_text(json.dumps({"images": images}))
    return dict(json_path=str(tmp_path / "data.json"), image_root=str(tmp_path / "images"),
                detections=str(detections), image_size=10, min_count=1)


def test_karpathy_boxes_scales_and_orders_boxes(tmp_path):
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps({"im0.png": [[0, 0, 20, 10, 0.2], [20, 10, 40, 20, 0.9]], "im1.png": []}))
    ds = karpathy_boxes("train", **_karpathy(tmp_path, dets))
    item = ds[0]
    assert item["image"].shape == (3, 10, 10)
    # best score first, scaled from 40x20 to 10x10
    torch.testing.assert_close(item["boxes"], torch.tensor([[5.0, 5, 10, 10], [0, 0, 5, 5]]))
    assert ds[1]["boxes"].shape == (0, 4)
    # boxes(i): in the image file's pixels, as the region generator crops them
    torch.testing.assert_close(ds.boxes(0), torch.tensor([[20.0, 10, 40, 20], [0, 0, 20, 10]]))
    assert ds.with_view("text")[0].keys() >= {"tokens"} and "boxes" not in ds.with_view("text")[0]
    assert ds.vocab.decode(item["tokens"].tolist()) == ["a", "red", "dog"]   # lower-cased
    np.savez(tmp_path / "dets.npz", **{"im0.png": np.zeros((0, 4)), "im1.png": np.ones((1, 4))})
    assert read_detections(tmp_path / "dets.npz")["im1.png"].shape == (1, 4)


def test_karpathy_boxes_errors_name_the_problem(tmp_path):
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps({"im0.png": []}))
    with pytest.raises(DataError, match="no boxes for 1 of the split's 2 images, e.g. 'im1.png'"):
        karpathy_boxes("train", **_karpathy(tmp_path, dets))
    dets.write_text(json.dumps({"im0.png": [[5, 0, 1, 1]]}))
    with pytest.raises(DataError, match="im0.png: boxes must be finite with x1 >= x0"):
        read_detections(dets)
    with pytest.raises(ValueError, match="detections is required"):
        karpathy_boxes("train", json_path="a", image_root="b")


def test_plugin_registers_its_components_and_recipes():
    for kind, name in (("model", "alignment/alignment"), ("loss", "alignment/ranking"),
                       ("evaluator", "alignment/retrieval"), ("dataset", "alignment/karpathy_boxes"),
                       ("backbone", "alignment/vgg16"), ("backbone", "alignment/alexnet")):
        assert fusedembed.get_registry(kind).get(name) is not None
    for recipe in ("scenes", "flickr8k", "flickr30k", "coco"):
        r = fusedembed.load_recipe(f"alignment/{recipe}")
        assert r.model["name"] == "alignment/alignment"
    assert fusedembed.load_recipe("alignment/coco").evaluators[0]["protocol"] == "coco"


def test_trains_on_scenes_and_aligns_a_new_image(tmp_path, capsys):
    from fusedembed_alignment.__main__ import main

    from fusedembed.trainer import train

    recipe = fusedembed.load_recipe("alignment/scenes", [
        "data.train.num_images=40", "data.train.train_images=40", "data.val.num_images=20",
        "data.val.train_images=40", "data.test=null", "trainer.epochs=1", "trainer.batch_size=20",
        "trainer.eval_batch_size=20", "trainer.workers=0", "model.hidden=16", "model.word_dim=8"])
    metrics = train(recipe, tmp_path / "run", out=lambda line: None)
    r10 = [v for k, v in metrics.items() if k.endswith("t2i_r10")]
    assert r10 and 0 <= r10[0] <= 100, metrics
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "img.png")
    assert main(["align", str(tmp_path / "run" / "last.pt"), "--image", str(tmp_path / "img.png"),
                 "--boxes", "0,0,32,32;30,30,60,60", "--sentence", "a big red circle", "--beta", "100",
                 "--out", str(tmp_path / "snip.png"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "1 snippets (beta 100" in printed and "'a big red circle'" in printed   # one run at large beta
    assert Image.open(tmp_path / "snip.png").size[0] >= 256

    # Bad input names the option: a box given as x,y,w,h, a file that is no image.
    model = str(tmp_path / "run" / "last.pt")
    with pytest.raises(SystemExit, match=r"--boxes: expected x0 < x1 and y0 < y1 .* got box 2 '30,30,20,20'"):
        main(["align", model, "--image", str(tmp_path / "img.png"), "--boxes", "0,0,32,32;30,30,20,20",
              "--sentence", "a red circle"])
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(SystemExit, match=r"--image: cannot decode image .*notes.png"):
        main(["align", model, "--image", str(tmp_path / "notes.png"), "--boxes", "0,0,32,32",
              "--sentence", "a red circle"])


def test_vocab_command_keeps_training_words_seen_min_count_times(tmp_path, capsys):
    from fusedembed_alignment.__main__ import main

    from fusedembed.data import Vocab

    images = [{"filename": "a.jpg", "split": "train", "sentences": [{"tokens": ["A", "dog"]}, {"raw": "a cat"}]},
              {"filename": "b.jpg", "split": "test", "sentences": [{"tokens": ["dog", "dog", "zebra"]}]}]
    (tmp_path / "d.json").write_text(json.dumps({"images": images}))
    assert main(["vocab", str(tmp_path / "d.json"), str(tmp_path / "v.txt"), "--min-count", "2"]) == 0
    assert Vocab.load(tmp_path / "v.txt").itos == ["<pad>", "<unk>", "a"]   # test captions not counted
    with pytest.raises(SystemExit, match="--boxes: expected 4 numbers per box"):
        main(["align", "m.pt", "--image", "x.png", "--boxes", "1,2,3", "--sentence", "a"])

"""Each evaluator on small folders in the datasets' real layouts and file names; FAISS = exact."""

import json
import pickle

import numpy as np
import pytest
import torch
from fusedembed_multigrain.retrieval import Copydays, Holidays, Revisited, UKBench, evaluate, knn
from PIL import Image

from fusedembed.data import DataError, ImageReadError

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


class MeanColour(torch.nn.Module):
    """A 'model' whose embedding is the image's mean colour (normalised): images of one colour
    match each other."""

    def forward(self, batch):
        x = batch["image"].flatten(2).mean(2)
        return {"embedding": torch.nn.functional.normalize(x - x.mean(1, keepdim=True) + 1e-3, dim=1)}


def _save(path, colour, size=(20, 12), noise=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0], 3), np.uint8) + np.array(colour, np.uint8)
    arr[0, 0] = (noise * 37) % 255            # tiny differences so no two files are identical
    Image.fromarray(arr).save(path)


def test_holidays_groups_queries_last_group_and_rotation(tmp_path):
    names = {"100000": 0, "100001": 0, "100100": 1, "100101": 1, "100102": 1, "100200": 2, "100201": 2}
    for i, (name, c) in enumerate(names.items()):
        _save(tmp_path / "jpg" / f"{name}.jpg", COLOURS[c], noise=i)
    (tmp_path / "rot.yaml").write_text('{\n"100001.jpg": 90,\n"100101.jpg": 180\n}\n')
    b = Holidays(tmp_path, tmp_path / "rot.yaml")
    assert b.groups == [1000, 1000, 1001, 1001, 1001, 1002, 1002]
    assert b.queries == [0, 2, 5]                            # the last group's query too
    imgs = b.images()
    assert imgs[0].shape[1:] == (12, 20) and imgs[1].shape[1:] == (20, 12)    # 90 degrees
    out = evaluate(MeanColour(), "holidays", tmp_path, size=20, rotations=tmp_path / "rot.yaml")
    assert out["num_queries"] == 3 and out["map"] == pytest.approx(100.0)
    # the trapezoid AP with the query excluded, on embeddings put by hand
    emb = torch.tensor([[1.0, 0], [0.9, 0.1], [0.95, 0.05], [0, 1], [0.1, 0.9], [0.5, 0.5], [0.4, 0.6]])
    assert b.score(emb)["num_queries"] == 3


def test_ukbench_groups_sorted_names(tmp_path):
    # written in shuffled order: grouping must follow the sorted names
    order = [5, 0, 7, 2, 1, 6, 3, 4]
    for i in order:
        _save(tmp_path / f"ukbench{i:05d}.jpg", COLOURS[i // 4], noise=i)
    b = UKBench(tmp_path)
    assert [p.name for p in b.paths] == [f"ukbench{i:05d}.jpg" for i in range(8)]
    assert evaluate(MeanColour(), "ukbench", tmp_path, size=20)["ns_score"] == pytest.approx(4.0)
    # swapping two images between groups: 2 of the 4 top hits of 6 images stay
    _save(tmp_path / "ukbench00003.jpg", COLOURS[1], noise=3)
    _save(tmp_path / "ukbench00004.jpg", COLOURS[0], noise=4)
    assert evaluate(MeanColour(), "ukbench", tmp_path, size=20)["ns_score"] == pytest.approx((6 * 3 + 2 * 1) / 8)
    _save(tmp_path / "ukbench00008.jpg", COLOURS[2])
    with pytest.raises(DataError, match="UKBench: expected a multiple of 4 images, got 9"):
        UKBench(tmp_path)


def test_copydays_strong_with_distractors(tmp_path):
    _save(tmp_path / "200000.jpg", COLOURS[0])
    _save(tmp_path / "200100.jpg", COLOURS[1])
    _save(tmp_path / "strong" / "200001.jpg", COLOURS[0], noise=1)
    _save(tmp_path / "strong" / "200002.jpg", COLOURS[0], noise=2)
    _save(tmp_path / "strong" / "200101.jpg", COLOURS[1], noise=3)
    for i in range(3):
        _save(tmp_path / "yfcc" / f"{i}.jpg", COLOURS[2 + i])
    b = Copydays(tmp_path, tmp_path / "yfcc")
    assert b.targets == [0, 0, 1] and len(b.gallery_images()) == 5
    assert evaluate(MeanColour(), "copydays", tmp_path, size=20, distractors=tmp_path / "yfcc")["map"] == \
        pytest.approx(100.0)
    # a distractor identical in colour to original 1, ranked above it (pessimistic ties): AP 1/2 trapezoid
    _save(tmp_path / "yfcc" / "a.jpg", COLOURS[1], noise=3)
    out = evaluate(MeanColour(), "copydays", tmp_path, size=20, distractors=tmp_path / "yfcc")
    assert out["map"] < 100.0


def test_revisited_protocols_and_query_crop(tmp_path):
    imlist = [f"all_souls_{i:06d}" for i in range(5)]
    qimlist = ["all_souls_000100"]
    for i, name in enumerate(imlist + qimlist):
        _save(tmp_path / "jpg" / f"{name}.jpg", COLOURS[0], size=(20, 16), noise=i)
    gnd = [{"bbx": [2.0, 3.0, 12.0, 11.0], "easy": [1], "hard": [3], "junk": [0]}]
    with open(tmp_path / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, f)
    b = Revisited(tmp_path, "roxford5k")
    assert b.query_images()[0].shape[1:] == (8, 10)              # cropped to bbx
    assert Revisited(tmp_path, "roxford5k", crop_query=False).query_images()[0].shape[1:] == (16, 20)
    # gallery ranking by score: 0, 1, 2, 3, 4
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.5, 0.5]])
    out = b.score(q, g)
    # easy: positives {1}, junk {0, 3}: ranking 1, 2, 4 -> AP 1
    assert out["easy_map"] == pytest.approx(100.0)
    # medium: positives {1, 3}, junk {0}: ranking 1, 2, 3, 4 -> positives at 0 and 2
    assert out["medium_map"] == pytest.approx(100 * (1 + (1 / 2 + 2 / 3) / 2) / 2)
    # hard: positives {3}, junk {0, 1}: ranking 2, 3, 4 -> position 1
    assert out["hard_map"] == pytest.approx(100 * (0 + 1 / 2) / 2)


def test_missing_folders_are_named(tmp_path):
    with pytest.raises(DataError, match="gnd_rparis6k.pkl: Revisited: file not found"):
        Revisited(tmp_path, "rparis6k")
    with pytest.raises(ValueError, match="benchmark must be"):
        evaluate(MeanColour(), "oxford", tmp_path)
    (tmp_path / "r.json").write_text(json.dumps({"a.jpg": 45}))
    from fusedembed_multigrain.retrieval import read_rotations
    with pytest.raises(ValueError, match="multiple of 90"):
        read_rotations(tmp_path / "r.json")
    (tmp_path / "r.yaml").write_bytes(b"# \xe9t\xe9\n100001.jpg: 90\n")          # Latin-1, not UTF-8
    with pytest.raises(DataError, match=r"r\.yaml:line 1: not UTF-8 text: byte 2 \(0xe9\)"):
        read_rotations(tmp_path / "r.yaml")


def test_unreadable_images_are_named(tmp_path):
    # A JPEG cut short: PIL's "image file is truncated (N bytes not processed)" named no file.
    _save(tmp_path / "100000.jpg", COLOURS[0])
    noise = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "100001.jpg", quality=90)
    good = (tmp_path / "100001.jpg").read_bytes()
    (tmp_path / "100001.jpg").write_bytes(good[:len(good) * 2 // 3])        # header intact
    with pytest.raises(ImageReadError, match=r"cannot read image .*100001\.jpg: image file is truncated"):
        Holidays(tmp_path).images()


def test_faiss_flat_equals_exact():
    pytest.importorskip("faiss")
    g = torch.nn.functional.normalize(torch.randn(300, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    q = g[:20] + 0.05 * torch.randn(20, 16, generator=torch.Generator().manual_seed(1))
    s_exact, i_exact = knn(q, g, 5, "exact")
    s_flat, i_flat = knn(q, g, 5, "flat")
    assert torch.equal(i_exact, i_flat)
    torch.testing.assert_close(s_exact, s_flat, atol=1e-5, rtol=1e-5)

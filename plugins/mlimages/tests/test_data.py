"""The list datasets (images decoded by torchvision from the image root, soft labels kept, bad
lines and images named or skipped) and the scenes as a multi-label set."""

import io

import numpy as np
import pytest
import torch
from fusedembed_mlimages.data import labelled_list, mlimages, scenes_multilabel
from PIL import Image

from fusedembed.data import DataError

DICTIONARY = "n0\t-1\tthing\nn1\t0\tanimal\nn2\t1\tdog\nn3\t-1\tplace\n"


def png(path, size=(6, 5), colour=(10, 20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG")


def truncated_jpeg(path):
    """A real JPEG cut in the middle of its compressed data (its header intact)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    path.write_bytes(data[:len(data) * 2 // 3])


def test_mlimages_list_soft_labels_ancestors_and_transforms(tmp_path):
    (tmp_path / "dict.txt").write_text(DICTIONARY)
    png(tmp_path / "im" / "im_0.jpg", (60, 50), (255, 0, 0))
    png(tmp_path / "im" / "im_1.jpg")
    (tmp_path / "train_list.txt").write_text("im_0.jpg\thttps://example.org/x.jpg\t2:0.9\t3:1\n\nim_1.jpg 1:0.8   0\n")
    args = dict(list_file=str(tmp_path / "{split}_list.txt"), image_root=str(tmp_path / "im"),
                dictionary=str(tmp_path / "dict.txt"), image_size=16)
    ds = mlimages("train", **args)
    assert len(ds) == 2 and ds.num_classes == 4 and ds.classes.names[2] == "dog"
    assert ds[0]["labels"].tolist() == pytest.approx([0, 0, 0.9, 1])
    assert ds[1]["labels"].tolist() == pytest.approx([1, 0.8, 0, 0])
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["instance"] == 0 and item["path"].endswith("im_0.jpg")
    assert ds.label_counts().tolist() == [1, 1, 1, 1]
    (tmp_path / "val_list.txt").write_text("im_0.jpg 2\n")
    val = mlimages("val", **args, add_ancestors=True)
    # eval: central crop of a uniform red image, scaled to [-1, 1]
    torch.testing.assert_close(val[0]["image"][:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert val[0]["labels"].tolist() == [1, 1, 1, 0]
    assert len(mlimages("train", **{**args, "dictionary": None}, num_classes=5)[0]["labels"]) == 5
    with pytest.raises(ValueError, match="dictionary= or num_classes="):
        mlimages("train", **{**args, "dictionary": None})
    with pytest.raises(ValueError, match="num_classes=3 but .* has 4 classes"):
        mlimages("train", **args, num_classes=3)


def test_mlimages_errors_and_skips(tmp_path):
    png(tmp_path / "ok.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\x89PNG broken")
    (tmp_path / "list.txt").write_text(
        "ok.jpg 0:1\n"
        "ok.jpg 1:high\n"
        "ok.jpg 9\n"
        "ok.jpg 1:1.5\n"
        "ok.jpg 1 1:0.8\n"
        "missing.jpg 0\n"
        "bad.jpg 0\n")
    args = dict(split="train", list_file=tmp_path / "list.txt", image_root=tmp_path, num_classes=4)
    with pytest.raises(DataError, match=r"list.txt:line 2: bad label field '1:high'"):
        mlimages(**args)
    with pytest.warns(RuntimeWarning, match="skipped 4 malformed_line, 1 missing_image, 1 unreadable_image"):
        ds = mlimages(**args, skip_bad=True, verify_images=True)
    assert len(ds) == 1
    assert [m.split(": ", 1)[0].rsplit(":", 1)[1] for m in ds.skip_messages] == \
        ["line 2", "line 3", "line 4", "line 5", "line 6", "line 7"]
    assert "class 9 out of range" in ds.skip_messages[1] and "listed twice" in ds.skip_messages[3]
    with pytest.raises(DataError, match="nothing.txt: file not found"):
        mlimages("train", tmp_path / "nothing.txt", tmp_path, num_classes=2)
    with pytest.warns(RuntimeWarning, match="4 malformed_line, 1 missing_image"):
        ds = mlimages(**args, skip_bad=True)      # unverified: fails when read
    assert len(ds) == 2
    with pytest.warns(RuntimeWarning, match=r"list.txt:line 7: cannot read image .*bad.jpg"):
        assert ds[1]["path"].endswith("ok.jpg")     # skipped at access: the next readable item
    (tmp_path / "bad.txt").write_text("bad.jpg 0\n")
    with pytest.raises(DataError, match=r"bad.txt:line 1: cannot read image .*bad.jpg"):
        mlimages("train", tmp_path / "bad.txt", tmp_path, num_classes=4)[0]      # without skip_bad
    (tmp_path / "latin1.txt").write_bytes(b"ok.jpg 0\nb\xe4r.png 1\n")
    with pytest.raises(DataError, match=r"latin1.txt:line 2: not UTF-8 text"):
        mlimages("train", tmp_path / "latin1.txt", tmp_path, num_classes=2)


def test_a_truncated_jpeg_fails_verification_and_at_access(tmp_path):
    png(tmp_path / "ok.jpg")
    truncated_jpeg(tmp_path / "cut.jpg")
    (tmp_path / "list.txt").write_text("cut.jpg 0\nok.jpg 1\n")
    args = dict(split="train", list_file=tmp_path / "list.txt", image_root=tmp_path, num_classes=2)
    with pytest.raises(DataError, match=r"list.txt:line 1: cannot read image .*cut.jpg: .*truncated"):
        mlimages(**args, verify_images=True)
    with pytest.raises(DataError, match=r"list.txt:line 1: cannot read image .*cut.jpg"):
        mlimages(**args)[0]
    ds = mlimages(**args, skip_bad=True)
    with pytest.warns(RuntimeWarning, match="cut.jpg"):
        assert ds[0]["path"].endswith("ok.jpg") and ds[0]["labels"].tolist() == [0, 1]
    assert ds.skipped == {"unreadable_image": 1}


def test_labelled_list_is_the_single_label_form(tmp_path):
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    (tmp_path / "train.txt").write_text("a.png 3\nb.png 0\nb.png x\n")
    with pytest.raises(DataError, match=r"train.txt:line 3: expected <image> <class in \[0, 5\)>"):
        labelled_list("train", tmp_path / "{split}.txt", tmp_path, 5)
    with pytest.warns(RuntimeWarning, match="1 malformed_line"):
        ds = labelled_list("train", tmp_path / "{split}.txt", tmp_path, 5, image_size=8, skip_bad=True)
    assert [ds[i]["label"] for i in range(2)] == [3, 0] and ds[0]["image"].shape == (3, 8, 8)
    assert ds.label_counts().tolist() == [1, 0, 0, 1, 0]


def test_scenes_multilabel_labels_and_the_single_label_task(scenes_root):
    ds = scenes_multilabel("train", num_images=40, image_size=32, root=scenes_root, progress=False, workers=1)
    item = ds[3]
    assert item["image"].shape == (3, 32, 32) and -1 <= item["image"].min() and item["image"].max() <= 1
    assert item["labels"].shape == (57,) and torch.equal(item["labels"], ds.base.labels[3].float())
    colours = [ds.classes.index(c) for c in ("red", "orange", "yellow", "green", "blue", "purple")]
    for i in range(40):
        objects = ds.base[i]["objects"]
        assert ds[i]["label"] == len(set(objects[:, 1].tolist())) - 1        # distinct colours - 1
        assert ds[i]["label"] == int(ds.base.labels[i, colours].sum()) - 1
    assert ds.label_counts().tolist() == ds.base.labels.sum(0).tolist()
    val = scenes_multilabel("train", num_images=8, image_size=32, root=scenes_root, scenes_split="val",
                            progress=False, workers=1)
    assert val.base.split == "val" and not torch.equal(val[0]["image"], ds[0]["image"])

"""The authors' test-time image feature (``test/extract_pic_feature_word2_plus_52.m``): the
uncropped short-side-256 image, fc1 / fc1_1 as 1x1 convs on the pool5 map summed over space,
plus the mirrored image, fc1_1bn before the ReLU, L2-normalised."""

import json

import pytest
import torch
import torch.nn.functional as F
from fusedembed_dualpath.datasets import ImageTransform
from fusedembed_dualpath.evaluator import encode
from fusedembed_dualpath.image_branch import conv_map
from PIL import Image
from torch.utils.data import DataLoader

from fusedembed import load_recipe
from fusedembed.data import collate


def _model(registries, **extra):
    torch.manual_seed(0)
    model = registries.build("model", {
        "name": "dualpath", "dim": 16, "max_len": 8, "test_pool": "windows", "test_window": 3,
        "image_backbone": {"name": "tiny_cnn", "width": 4, "depth": 2},
        "text_backbone": {"name": "textcnn", "vocab_size": 30, "max_len": 8, "word_dim": 8, "widths": [8, 16],
                          "blocks": [1, 1], "strides": [1, 2], "first_mids": None, "fc_dim": 16}, **extra})
    for bn in (model.image.head[1], model.image.head[4]):         # BN that shifts and scales
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.bias.data.uniform_(-1, 1)
    return model.eval()


def _plain_bn(bn, x):
    return (x - bn.running_mean) / (bn.running_var + bn.eps).sqrt() * bn.weight + bn.bias


def _plain_window_sum(model, image, k):
    """fc1 -> BN -> ReLU -> fc1_1 -> BN on every k x k window mean of the map, summed: the reference."""
    head, fmap = model.image.head, conv_map(model.image.backbone, image[None])[0]
    total = 0
    for i in range(fmap.shape[1] - k + 1):
        for j in range(fmap.shape[2] - k + 1):
            v = fmap[:, i:i + k, j:j + k].mean((1, 2))
            h = F.relu(_plain_bn(head[1], head[0].weight @ v))
            total = total + _plain_bn(head[4], head[3].weight @ h)
    return total


def test_window_feature_is_the_fc_on_every_pool5_window_summed(registries):
    model = _model(registries, test_flip=False)
    x = torch.rand(2, 3, 24, 36)                        # a 6 x 9 map: 4 x 7 windows of 3 x 3
    with torch.no_grad():
        got = model.encode_image(x)
        want = torch.stack([_plain_window_sum(model, im, 3) for im in x])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert (got < 0).any()                          # fc1_1bn, before the ReLU
        # A map no larger than the window is one window: the training crop's global pooling.
        model.test_window = 9
        torch.testing.assert_close(model.encode_image(x), model.image.features(x)[0], rtol=1e-4, atol=1e-4)


def test_test_feature_adds_the_mirror_and_is_l2_normalised(registries):
    model = _model(registries)
    x = torch.rand(2, 3, 24, 36)
    with torch.no_grad():
        out = model({"image": x})["image_embedding"]
        torch.testing.assert_close(model({"image": x.flip(-1)})["image_embedding"], out)   # image == its mirror
        one = model.image.window_features
        torch.testing.assert_close(model.encode_image(x), one(x, 3)[0] + one(x.flip(-1), 3)[0])
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    assert (out < 0).any()


def test_test_images_keep_their_aspect_with_short_side_256():
    t = ImageTransform(224, test_resize="short_side", test_size=256)
    assert t(torch.rand(3, 300, 450)).shape == (3, 256, 384)
    assert t(torch.rand(3, 500, 333)).shape == (3, 384, 256)        # 500 * 256 / 333 = 384.4
    assert ImageTransform(224)(torch.rand(3, 300, 450)).shape == (3, 224, 224)       # ours: a square
    with pytest.raises(ValueError, match="test_resize must be one of"):
        ImageTransform(224, test_resize="long_side")


def _images(root, sizes):
    root.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (40 * i, 90, 200 - 40 * i)).save(root / f"{i}.jpg")


def test_authors_test_images_are_encoded_by_size_without_padding(registries, tmp_path):
    _images(tmp_path / "img", [(20, 12), (12, 20), (20, 12), (16, 16), (16, 16)])         # (width, height)
    doc = {"images": [{"filename": f"{i}.jpg", "split": "test" if i < 4 else "train",
                       "sentences": [{"raw": "a red dog"}]} for i in range(5)]}
    (tmp_path / "d.json").write_text(json.dumps(doc))
    data = registries.build("dataset", {
        "name": "dualpath/flickr30k", "json_path": str(tmp_path / "d.json"), "image_root": str(tmp_path / "img"),
        "image_size": 16, "view": "pair", "test_images": "authors"}, split="test")
    images = data.with_view("image")
    assert [tuple(images[i]["image"].shape[1:]) for i in range(4)] == [(256, 427), (427, 256), (256, 427),
                                                                       (256, 256)]
    model = _model(registries)
    img, _, _ = encode(model, DataLoader(data, batch_size=4, collate_fn=collate), device="cpu")
    with torch.no_grad():
        alone = torch.cat([model({"image": images[i]["image"][None]})["image_embedding"] for i in range(4)])
    torch.testing.assert_close(img, alone, rtol=1e-4, atol=1e-5)


def test_cuhk_authors_test_images_are_256_squares(registries, tmp_path):
    _images(tmp_path / "imgs", [(20, 12)])
    (tmp_path / "r.json").write_text(json.dumps([{"split": "test", "file_path": "0.jpg", "id": 3,
                                                  "captions": ["a man"]}]))
    data = registries.build("dataset", {"name": "dualpath/cuhk_pedes", "json_path": str(tmp_path / "r.json"),
                                        "image_root": str(tmp_path / "imgs"), "test_images": "authors"}, split="test")
    assert data[0]["image"].shape == (3, 256, 256)


@pytest.mark.parametrize("name", ["flickr30k", "coco", "cuhk_pedes"])
def test_full_recipes_test_as_the_authors(registries, name):
    recipe = load_recipe(f"dualpath/{name}")
    assert recipe.model["test_pool"] == "windows" and recipe.model["test_window"] == 7
    assert recipe.model["test_feature"] == "bn" and recipe.model["test_flip"]
    assert recipe.data.test["test_images"] == recipe.data.val["test_images"] == "authors"


def test_full_recipe_model_builds_and_reads_resnet50_pool5_windows(registries):
    cfg = dict(load_recipe("dualpath/flickr30k").model)
    cfg["image_backbone"] = {**cfg["image_backbone"], "pretrained_path": None}
    cfg["text_backbone"] = {**cfg["text_backbone"], "vocab_size": 10, "vocab_path": None, "word2vec_path": None}
    torch.manual_seed(0)
    model = registries.build("model", cfg).eval()
    assert model.test_pool == "windows"
    image = torch.rand(1, 3, 256, 320)                  # a 8 x 10 map: 2 x 4 windows of 7 x 7
    with torch.no_grad():
        fmap = conv_map(model.image.backbone, image)
        assert fmap.shape == (1, 2048, 8, 10)
        crop = image[..., :224, :224]                   # the training size: one window, the global pool
        torch.testing.assert_close(model.image.window_features(crop, 7)[0], model.image.features(crop)[0],
                                   rtol=1e-3, atol=1e-3)
        assert model({"image": image})["image_embedding"].shape == (1, 2048)
    with pytest.raises(ValueError, match="test_pool 'windows' averages the conv map"):
        registries.build("model", {**cfg, "image_backbone": {**cfg["image_backbone"], "pool": "gem"}})

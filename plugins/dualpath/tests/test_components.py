"""The recipe's components: registration, shapes, and each one against a hand-made case."""

import struct

import pytest
import torch
from fusedembed_dualpath.shift import all_placements, fit_lengths, place, random_offsets

from fusedembed import load_recipe
from fusedembed.data import Vocab


def test_registers_every_component_and_recipe(registries):
    assert "dualpath/textcnn" in registries["backbone"].list()
    assert "dualpath/dualpath" in registries["model"].list()
    assert {"dualpath/instance", "dualpath/bidir_ranking", "dualpath/inbatch_instance"} <= set(registries["loss"].list())
    assert {"dualpath/flickr30k", "dualpath/coco", "dualpath/cuhk_pedes"} <= set(registries["dataset"].list())
    assert "dualpath/retrieval" in registries["evaluator"].list()
    assert "dualpath/dualpath" in registries["demo"].list()
    assert registries["recipe"].list("dualpath/*") == ["dualpath/coco", "dualpath/cuhk_pedes", "dualpath/flickr30k",
                                                       "dualpath/scenes"]


@pytest.mark.parametrize("name", ["flickr30k", "coco", "cuhk_pedes", "scenes"])
def test_recipes_validate_with_two_stages(registries, name):
    recipe = load_recipe(f"dualpath/{name}")
    assert [s["name"] for s in recipe.stages] == ["stage1", "stage2"]
    stage1, stage2 = recipe.stages
    assert stage1["trainer"]["optimizer"]["lr_mult"]["image.backbone.*"] == 0          # CNN frozen
    assert 0 < stage2["trainer"]["optimizer"]["lr_mult"]["image.backbone.*"]          # then unfrozen
    assert [loss["name"] for loss in stage2["losses"]] in (["dualpath/bidir_ranking", "dualpath/instance"],
                                                           ["dualpath/pair_ranking", "dualpath/instance"])
    assert recipe.trainer.optimizer.nesterov and recipe.trainer.optimizer.momentum == 0.9
    assert recipe.trainer.optimizer.weight_decay == 1e-4


def test_textcnn_default_is_the_authors_net_block_by_block(registries):
    net = registries.build("backbone", {"name": "textcnn", "vocab_size": 50})
    assert net.out_dim == 2048 and net.max_len == 32
    # (in, mid, out, stride of the 1x2 conv) of coco_word2_pool.m's 14 blocks
    expected = ([(300, 128, 256, 1)] + [(256, 64, 256, 1)] * 2 + [(256, 512, 512, 2)] + [(512, 128, 512, 1)] * 3
                + [(512, 1024, 1024, 2)] + [(1024, 256, 1024, 1)] * 5 + [(1024, 2048, 2048, 1)])
    assert [(b.reduce[0].in_channels, b.conv.in_channels, b.expand[0].out_channels, b.conv.stride[0])
            for b in net.blocks] == expected
    assert all(b.reduce[0].stride == (1,) and b.expand[0].stride == (1,) for b in net.blocks)
    assert [b.project is not None and b.project[0].stride[0] for b in net.blocks] == (
        [1] + [False] * 2 + [2] + [False] * 3 + [2] + [False] * 5 + [1])
    convs = sum(m.weight.numel() for m in net.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Linear)))
    assert convs == 30_245_376                       # the authors' net after the word layer, fc5_2 included
    assert net.fc.bias is None and net.dropout.p == 0.5
    lengths = []
    hooks = [b.register_forward_hook(lambda m, i, o: lengths.append(o.shape[-1])) for b in net.blocks]
    net.eval()
    with torch.no_grad():
        assert net(torch.randint(50, (2, 32))).shape == (2, 2048)
    for h in hooks:
        h.remove()
    assert lengths == [32] * 3 + [16] * 4 + [8] * 6 + [8]


def test_textcnn_strided_block_keeps_every_word_on_the_residual_path(registries):
    # The stride sits in the 1x2 conv: with a 1x1/s2 reduce, odd words would never reach the output.
    net = registries.build("backbone", {"name": "textcnn", "vocab_size": 20, "word_dim": 8, "widths": [8, 16],
                                        "blocks": [1, 1], "strides": [1, 2], "first_mids": [4, 4], "fc_dim": 8})
    block = net.blocks[1].eval()
    x = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # before the ReLU: the branch is linear there, so no dead unit can hide a word
        base = block.bn(block.conv(torch.nn.functional.pad(block.reduce(x), (1, 0))))
        x2 = x.clone()
        x2[..., 3] += 1.0                            # an odd word moves the residual branch's output
        moved = block.bn(block.conv(torch.nn.functional.pad(block.reduce(x2), (1, 0))))
    assert base.shape[-1] == 4 and (moved - base).abs().sum() > 0


def test_textcnn_mid_conv_sees_only_the_word_and_its_left_neighbour(registries):
    net = registries.build("backbone", {"name": "textcnn", "vocab_size": 20, "word_dim": 8, "widths": [8],
                                  "blocks": [1], "strides": [1], "first_mids": None, "fc_dim": 8,
                                  "dropout": 0.0})
    block = net.blocks[0].eval()
    x = torch.randn(1, 8, 10)
    y = block.reduce(x)
    out = block.conv(torch.nn.functional.pad(y, (1, 0)))
    y2 = y.clone()
    y2[..., 5] += 1.0                            # changing word 5 moves outputs 5 and 6 only
    out2 = block.conv(torch.nn.functional.pad(y2, (1, 0)))
    changed = (out2 - out).abs().sum(1)[0] > 0
    assert changed.nonzero().flatten().tolist() == [5, 6]


def _vocab(tmp_path):
    path = tmp_path / "vocab.json"
    Vocab(["<pad>", "<unk>", "red", "circle"]).save(path)
    return path


def test_word2vec_text_and_binary_files_initialise_the_embedding(registries, tmp_path):
    vectors = {"red": [1.0, 2.0, 3.0], "circle": [-1.0, 0.5, 0.25]}
    text = tmp_path / "w2v.txt"
    text.write_text("2 3\n" + "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vectors.items()))
    binary = tmp_path / "w2v.bin"
    with open(binary, "wb") as f:
        f.write(b"2 3\n")
        for w, v in vectors.items():
            f.write(w.encode() + b" " + struct.pack("<3f", *v) + b"\n")
    for path in (text, binary):
        net = registries.build("backbone", {"name": "textcnn", "vocab_path": str(_vocab(tmp_path)), "word_dim": 3,
                                      "word2vec_path": str(path), "widths": [4], "blocks": [1], "strides": [1],
                                      "first_mids": None, "fc_dim": 4})
        assert net.vocab_size == 4
        torch.testing.assert_close(net.embed.weight[2:], torch.tensor(list(vectors.values())))
        assert net.embed.weight[0].abs().sum() == 0           # <pad>


def test_textcnn_errors_name_the_argument(registries, tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size must be >= 2 .* got 1"):
        registries.build("backbone", {"name": "textcnn", "vocab_size": 1})
    with pytest.raises(ValueError, match="word_dim is 5 but .* 3-d vectors"):
        path = tmp_path / "w.txt"
        path.write_text("red 1 2 3\n")
        registries.build("backbone", {"name": "textcnn", "vocab_path": str(_vocab(tmp_path)), "word_dim": 5,
                                "word2vec_path": str(path)})
    with pytest.raises(FileNotFoundError, match="word2vec_path"):
        registries.build("backbone", {"name": "textcnn", "vocab_path": str(_vocab(tmp_path)),
                                "word2vec_path": str(tmp_path / "missing.bin")})


def test_all_placements_equal_a_loop_over_offsets():
    tokens = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0], [2, 3, 4, 9]])
    lengths = fit_lengths(tokens, None, 6)
    placed, owner = all_placements(tokens, lengths, 6)
    expected, owners = [], []
    for b in range(3):
        n = int(lengths[b])
        for o in range(6 - n + 1):
            row = [0] * 6
            row[o:o + n] = tokens[b, :n].tolist()
            expected.append(row)
            owners.append(b)
    assert placed.tolist() == expected and owner.tolist() == owners


def test_random_offsets_stay_inside_the_window_and_vary():
    lengths = torch.tensor([3, 32, 1] * 200)
    offsets = random_offsets(lengths, 32, torch.Generator().manual_seed(0))
    assert (offsets >= 0).all() and (offsets + lengths <= 32).all()
    assert (offsets[1::3] == 0).all() and len(offsets[::3].unique()) == 30      # all 30 places used
    placed = place(torch.tensor([[4, 5, 6]]), torch.tensor([3]), torch.tensor([29]), 32)
    assert placed[0, 29:].tolist() == [4, 5, 6] and placed[0, :29].sum() == 0


@pytest.fixture()
def small_model(registries):
    torch.manual_seed(0)
    return registries.build("model", {
        "name": "dualpath", "dim": 16, "max_len": 8, "image_backbone": {"name": "tiny_cnn", "width": 4, "depth": 2},
        "text_backbone": {"name": "textcnn", "vocab_size": 30, "max_len": 8, "word_dim": 8, "widths": [8, 16],
                          "blocks": [1, 1], "strides": [1, 2], "first_mids": None, "fc_dim": 16}})


def test_test_time_text_feature_is_the_sum_over_offsets_of_the_bn_output(small_model):
    model = small_model.eval()
    tokens = torch.tensor([[3, 4, 5, 0], [7, 0, 0, 0]])
    with torch.no_grad():
        feats = model.encode_text(tokens)
        loop = [sum(model.text.features(place(tokens[b:b + 1], torch.tensor([n]), torch.tensor([o]), 8))[0][0]
                    for o in range(8 - n + 1)) for b, n in enumerate([3, 1])]
        out = model({"tokens": tokens})
    torch.testing.assert_close(feats, torch.stack(loop))
    torch.testing.assert_close(out["text_embedding"], torch.nn.functional.normalize(torch.stack(loop), dim=1))
    assert (feats < 0).any()                     # the BN output before ReLU, as the authors compare


def test_test_time_image_feature_adds_the_mirror(small_model):
    model = small_model.eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        bn = lambda v: model.image.features(v)[0]              # noqa: E731
        torch.testing.assert_close(model.encode_image(x), bn(x) + bn(x.flip(-1)))
        model.test_flip = False
        torch.testing.assert_close(model.encode_image(x), bn(x))
        model.test_feature = "relu"
        torch.testing.assert_close(model.encode_image(x), model.image(x))


def test_training_ranks_the_features_before_dropout_and_classifies_after_it(small_model):
    model = small_model.train()
    x = torch.rand(4, 3, 16, 16)
    torch.manual_seed(1)
    out = model({"image": x})
    torch.manual_seed(1)
    model.image.dropout.p = 0.0
    clean = model({"image": x})
    torch.testing.assert_close(out["image_embedding"], clean["image_embedding"])      # no dropout in the ranking
    torch.testing.assert_close(clean["image_embedding"], torch.nn.functional.normalize(clean["image_features"]))
    assert not torch.allclose(out["image_features"], clean["image_features"])         # dropout for the classifier


def test_ranking_loss_on_pre_dropout_features_trains_the_model(small_model, registries):
    torch.manual_seed(0)
    model = small_model.train()
    loss = registries.build("loss", {"name": "dualpath/bidir_ranking", "margin": 0.2, "negatives": "sum",
                                     "dim": 16, "reduction": "mean"})
    batch = {"image": torch.rand(8, 3, 16, 16), "tokens": torch.randint(2, 30, (8, 5))}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    values = []
    for _ in range(30):
        out = model(batch)
        value = loss(out["image_embedding"], out["text_embedding"])
        opt.zero_grad()
        value.backward()
        opt.step()
        values.append(value.item())
    assert values[-1] < 0.5 * values[0], values


def test_frozen_image_bn_statistics_stay_as_loaded_while_training(registries):
    model = registries.build("model", {
        "name": "dualpath", "dim": 16, "max_len": 8, "image_bn_momentum": 0.0,
        "image_backbone": {"name": "resnet18"},
        "text_backbone": {"name": "textcnn", "vocab_size": 30, "max_len": 8, "word_dim": 8, "widths": [8],
                          "blocks": [1], "strides": [1], "first_mids": None, "fc_dim": 16}}).train()
    before = model.image.backbone.state_dict()
    before = {k: v.clone() for k, v in before.items() if "running" in k}
    model({"image": torch.rand(2, 3, 32, 32)})
    after = model.image.backbone.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())
    head_bn = model.image.head[1]
    assert head_bn.momentum == 0.1                       # the new layers' BN still learns its statistics


def test_model_rejects_token_ids_beyond_its_vocabulary(small_model):
    with pytest.raises(ValueError, match="token id 30 is outside .* vocab_size 30"):
        small_model({"tokens": torch.tensor([[30, 2]])})


def test_model_checks_the_two_branches_share_one_space(registries):
    with pytest.raises(ValueError, match="out_dim must equal dim .* got out_dim=8, dim=16"):
        registries.build("model", {"name": "dualpath", "dim": 16, "image_backbone": "tiny_cnn",
                             "text_backbone": {"name": "textcnn", "vocab_size": 5, "fc_dim": 8}})

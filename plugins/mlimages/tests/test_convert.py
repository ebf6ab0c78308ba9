"""The TensorFlow checkpoint converter: the name/layout mapping on a synthetic variable set
(always), and a tiny checkpoint with the release's variable names written by TensorFlow, whose
TF forward pass the converted model must reproduce (needs tensorflow: skipped without it)."""

import numpy as np
import pytest
import torch
from fusedembed_mlimages.convert import ConversionError, convert_tensors, variable_map
from fusedembed_mlimages.model import MLImagesClassifier
from fusedembed_mlimages.resnet import PreActResNet

BLOCKS, WIDTH, CLASSES = [1, 2, 1, 1], 4, 7


def tf_variables(seed=0):
    """The release's variables for a small net (HWIO kernels, (in, out) dense), random values."""
    torch.manual_seed(seed)
    net = PreActResNet(blocks=BLOCKS, width=WIDTH)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    rng = np.random.default_rng(seed)
    out = {}
    for tf_name, key in variable_map(BLOCKS).items():
        if key == "fc.weight":
            value = rng.normal(size=(net.out_dim, CLASSES))
        elif key == "fc.bias":
            value = rng.normal(size=CLASSES)
        else:
            value = state[key].numpy()
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else rng.uniform(0.5, 1.5, size=value.shape)
        out[tf_name] = value.astype(np.float32)
    return out


def test_mapping_names_layouts_and_what_is_left_out():
    variables = tf_variables()
    assert "stages_1_block_1/conv2_b2/conv2d/kernel" in variables
    assert "stages_0_block_0/conv1_b1_bn/batch_normalization/moving_variance" in variables
    extras = {"global_step": np.zeros(()), "stages_0_block_0/conv1_b2/conv2d/kernel/Momentum": np.zeros(1),
              "Variable": np.zeros(CLASSES), "Variable_1": np.zeros(CLASSES)}      # optimizer, loss counters
    state, facts = convert_tensors(list(variables) + list(extras), lambda n: {**variables, **extras}[n])
    assert facts == {"blocks": BLOCKS, "width": WIDTH, "num_classes": CLASSES, "out_dim": 4 * WIDTH * 8}
    k = variables["stages_2_block_0/conv2_b2/conv2d/kernel"]                        # (3, 3, in, out)
    assert torch.equal(state["layer3.0.conv2.weight"], torch.from_numpy(k).permute(3, 2, 0, 1))
    assert torch.equal(state["fc.weight"], torch.from_numpy(variables["logits/dense/kernel"]).t())
    g = variables["global_pool/bn/batch_normalization/gamma"]
    assert torch.equal(state["final_bn.weight"], torch.from_numpy(g))
    model = PreActResNet(blocks=BLOCKS, width=WIDTH)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})   # strict: every key


def test_mapping_errors_name_the_variables():
    variables = tf_variables()
    del variables["stages_3_block_0/conv3_b2/conv2d/kernel"]
    with pytest.raises(ConversionError, match=r"lacks 1 variables .*\['stages_3_block_0/conv3_b2/conv2d/kernel'\]"):
        convert_tensors(list(variables), variables.__getitem__)
    with pytest.raises(ConversionError, match="does not know, e.g. \\['extra/thing'\\]"):
        full = {**tf_variables(), "extra/thing": np.zeros(1)}
        convert_tensors(list(full), full.__getitem__)
    with pytest.raises(ConversionError, match="expected variables of stages 0-3"):
        convert_tensors(["init/init_conv/conv2d/kernel"], lambda n: None)
    wrong = tf_variables()
    wrong["stages_1_block_0/conv1_b2/conv2d/kernel"] = np.zeros((1, 1, 3, 3), np.float32)
    with pytest.raises(ConversionError, match="shapes do not make a preact_resnet"):
        convert_tensors(list(wrong), wrong.__getitem__)


def _tf_forward(tf, v, x, blocks, eps=1e-5):
    """The release's ResNet forward (models/resnet.py, inference) in TensorFlow, NHWC."""
    def conv(x, name, stride):
        k = v[name]
        if stride > 1:                     # explicit padding, then VALID, as _pre_padding_conv
            pad = k.shape[0] - 1
            x = tf.pad(x, [[0, 0], [pad // 2, pad - pad // 2], [pad // 2, pad - pad // 2], [0, 0]])
            return tf.nn.conv2d(x, k, strides=stride, padding="VALID")
        return tf.nn.conv2d(x, k, strides=1, padding="SAME")

    def bn_relu(x, scope):
        p = f"{scope}/batch_normalization/"
        return tf.nn.relu(tf.nn.batch_normalization(x, v[p + "moving_mean"], v[p + "moving_variance"], v[p + "beta"],
                                                    v[p + "gamma"], eps))

    x = conv(x, "init/init_conv/conv2d/kernel", 2)
    for s, n in enumerate(blocks):
        for b in range(n):
            sc = f"stages_{s}_block_{b}"
            stride = 2 if b == 0 else 1
            short = conv(bn_relu(x, f"{sc}/conv1_b1_bn"), f"{sc}/conv1_b1/conv2d/kernel", 2) if b == 0 else x
            y = conv(bn_relu(x, f"{sc}/conv1_b2_bn"), f"{sc}/conv1_b2/conv2d/kernel", 1)
            y = conv(bn_relu(y, f"{sc}/conv2_b2_bn"), f"{sc}/conv2_b2/conv2d/kernel", stride)
            y = conv(bn_relu(y, f"{sc}/conv3_b2_bn"), f"{sc}/conv3_b2/conv2d/kernel", 1)
            x = y + short
    x = tf.reduce_mean(bn_relu(x, "global_pool/bn"), axis=[1, 2])
    return (tf.matmul(x, v["logits/dense/kernel"]) + v["logits/dense/bias"]).numpy()


def test_a_tensorflow_checkpoint_converts_to_the_same_network(tmp_path, registries):
    tf = pytest.importorskip("tensorflow")
    from fusedembed_mlimages.convert import main

    variables = tf_variables(seed=3)
    with tf.Graph().as_default():
        tf_vars = [tf.compat.v1.get_variable(name, initializer=value) for name, value in variables.items()]
        tf_vars.append(tf.compat.v1.get_variable("stages_0_block_0/conv1_b2/conv2d/kernel/Momentum",
                                                 initializer=np.zeros((1, 1, WIDTH, WIDTH), np.float32)))
        tf_vars.append(tf.compat.v1.train.get_or_create_global_step())
        saver = tf.compat.v1.train.Saver(tf_vars)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(sess, str(tmp_path / "ckpt" / "model.ckpt"))
    out = tmp_path / "converted.safetensors"
    assert main([prefix, str(out)]) == 0
    model = MLImagesClassifier({"name": "mlimages/preact_resnet101", "blocks": BLOCKS, "width": WIDTH},
                               num_classes=CLASSES, pretrained_path=str(out)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ours = model({"image": x})["logits"].numpy()
    nhwc = tf.constant(x.permute(0, 2, 3, 1).numpy())
    theirs = _tf_forward(tf, {k: tf.constant(a) for k, a in variables.items()}, nhwc, BLOCKS)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    # the trunk alone (a new head: the transfer) loads from the same file
    trunk = registries.build("backbone", {"name": "preact_resnet101", "blocks": BLOCKS, "width": WIDTH,
                                          "pretrained_path": str(out)})
    torch.testing.assert_close(trunk.state_dict()["conv1.weight"], model.backbone.state_dict()["conv1.weight"])
    assert main([str(tmp_path / "missing" / "model.ckpt"), str(out)]) == 1

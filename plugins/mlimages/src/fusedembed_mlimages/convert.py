"""The released TensorFlow checkpoint -> safetensors for ``mlimages/preact_resnet101`` plus the
FC head (``fc.weight``, ``fc.bias``: 11,166 classes in the release).

    python -m fusedembed_mlimages.convert CKPT OUT.safetensors

``CKPT`` is the checkpoint prefix (``.../model.ckpt``, beside its ``.index`` and ``.data-*``
files). Reading it needs TensorFlow (``pip install fusedembed-mlimages[tensorflow]``).

Variable names (``models/resnet.py``; tf.layers put ``conv2d`` / ``batch_normalization`` /
``dense`` under each scope)::

    init/init_conv/conv2d/kernel                                 -> conv1.weight
    stages_{s}_block_{b}/conv1_b1_bn/batch_normalization/{gamma, beta, moving_mean, moving_variance}
                                                                 -> layer{s+1}.{b}.shortcut_bn.*
    stages_{s}_block_{b}/conv1_b1/conv2d/kernel                  -> layer{s+1}.{b}.downsample.0.weight
    stages_{s}_block_{b}/conv{k}_b2_bn/... , conv{k}_b2/...      -> layer{s+1}.{b}.bn{k}.*, .conv{k}.weight
    global_pool/bn/batch_normalization/...                       -> final_bn.*
    logits/dense/{kernel, bias}                                  -> fc.weight (transposed), fc.bias

Conv kernels are stored HWIO and become OIHW. Optimizer slots (``Momentum``), ``global_step``
and the loss counters are not model weights and are left out. The units per stage, the width
and the class count are read from the checkpoint; a missing variable or a shape that does not
fit is an error naming it.
"""

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from fusedembed.errors import run_command

BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_UNIT = re.compile(r"^stages_(\d+)_block_(\d+)/")
_SKIP = re.compile(r"(^|/)(Momentum|global_step)(/|$)|^Variable(_\d+)?$")


class ConversionError(ValueError):
    pass


def _bn(prefix: str, target: str) -> List[Tuple[str, str]]:
    return [(f"{prefix}/batch_normalization/{tf}", f"{target}.{pt}") for tf, pt in BN.items()]


def variable_map(blocks: List[int]) -> Dict[str, str]:
    """TF variable name -> state-dict key, for a net with ``blocks`` units per stage."""
    out = {"init/init_conv/conv2d/kernel": "conv1.weight", "logits/dense/kernel": "fc.weight",
           "logits/dense/bias": "fc.bias"}
    out.update(_bn("global_pool/bn", "final_bn"))
    for s, n in enumerate(blocks):
        for b in range(n):
            scope, unit = f"stages_{s}_block_{b}", f"layer{s + 1}.{b}"
            if b == 0:
                out.update(_bn(f"{scope}/conv1_b1_bn", f"{unit}.shortcut_bn"))
                out[f"{scope}/conv1_b1/conv2d/kernel"] = f"{unit}.downsample.0.weight"
            for k in (1, 2, 3):
                out.update(_bn(f"{scope}/conv{k}_b2_bn", f"{unit}.bn{k}"))
                out[f"{scope}/conv{k}_b2/conv2d/kernel"] = f"{unit}.conv{k}.weight"
    return out


def blocks_of(names) -> List[int]:
    """Units per stage from the variable names."""
    units: Dict[int, int] = {}
    for name in names:
        m = _UNIT.match(name)
        if m:
            s, b = int(m.group(1)), int(m.group(2))
            units[s] = max(units.get(s, 0), b + 1)
    if sorted(units) != [0, 1, 2, 3]:
        raise ConversionError(f"expected variables of stages 0-3 (stages_<s>_block_<b>/...), found stages "
                              f"{sorted(units)}: is this an ML-Images ResNet checkpoint?")
    return [units[s] for s in range(4)]


def convert_tensors(names, read: Callable[[str], np.ndarray]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(state dict, facts) from the checkpoint's variable ``names`` and a reader of one."""
    names = [n for n in names if not _SKIP.search(n)]
    blocks = blocks_of(names)
    mapping = variable_map(blocks)
    missing = [n for n in mapping if n not in names]
    if missing:
        raise ConversionError(f"the checkpoint lacks {len(missing)} variables of a ResNet with units {blocks} "
                              f"per stage, e.g. {missing[:3]}")
    extra = [n for n in names if n not in mapping]
    if extra:
        raise ConversionError(f"the checkpoint has {len(extra)} variables this converter does not know, e.g. "
                              f"{extra[:3]}")
    state = {}
    for tf_name, key in mapping.items():
        value = torch.from_numpy(np.ascontiguousarray(read(tf_name))).float()
        if key.endswith("weight") and value.dim() == 4:
            value = value.permute(3, 2, 0, 1)                       # HWIO -> OIHW
        elif key == "fc.weight":
            value = value.t()                                       # (in, out) -> (out, in)
        state[key] = value.contiguous()
    for key in [k for k in state if k.endswith(".running_var")]:
        state[key[: -len("running_var")] + "num_batches_tracked"] = torch.zeros((), dtype=torch.int64)
    width = state["conv1.weight"].shape[0]
    facts = {"blocks": blocks, "width": width, "num_classes": state["fc.weight"].shape[0],
             "out_dim": state["fc.weight"].shape[1]}
    _check_shapes(state, facts)
    return state, facts


def _check_shapes(state: Dict[str, torch.Tensor], facts: dict) -> None:
    from .resnet import PreActResNet

    with torch.device("meta"):
        expected = PreActResNet(blocks=facts["blocks"], width=facts["width"]).state_dict()
    expected["fc.weight"] = torch.empty(facts["num_classes"], expected["final_bn.weight"].shape[0], device="meta")
    expected["fc.bias"] = torch.empty(facts["num_classes"], device="meta")
    bad = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
           if k in expected and v.shape != expected[k].shape]
    if bad or expected.keys() != state.keys():
        raise ConversionError(f"the checkpoint's shapes do not make a preact_resnet (blocks={facts['blocks']}, "
                              f"width={facts['width']}): {bad[:3] or sorted(set(expected) ^ set(state))[:3]}")


def convert(checkpoint, out) -> dict:
    """Reads the TF checkpoint with TensorFlow, writes ``out`` (safetensors) and returns the
    facts (blocks, width, num_classes) also stored in its metadata."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError("reading a TensorFlow checkpoint needs tensorflow: pip install "
                          "'fusedembed-mlimages[tensorflow]' (or tensorflow-cpu)") from None
    from safetensors.torch import save_file

    try:
        reader = tf.train.load_checkpoint(str(checkpoint))
    except Exception as err:   # NotFoundError, DataLossError, ...: one message naming the file
        raise ConversionError(f"cannot read the TensorFlow checkpoint {str(checkpoint)!r}: "
                              f"{str(err).splitlines()[0]}") from None
    state, facts = convert_tensors(list(reader.get_variable_to_shape_map()), reader.get_tensor)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(state, str(tmp), metadata={"format": "fusedembed-mlimages", "source": "tensorflow",
                                         **{k: str(v) for k, v in facts.items()}})
    tmp.replace(out)
    return facts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusedembed_mlimages.convert", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="TF checkpoint prefix, e.g. ckpt-resnet101-mlimages/model.ckpt")
    p.add_argument("out", help="the .safetensors file to write")
    args = p.parse_args(argv)
    try:
        facts = convert(args.checkpoint, args.out)
    except (ConversionError, ImportError) as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: preact_resnet blocks={facts['blocks']} width={facts['width']} "
          f"({facts['out_dim']}-d) + fc for {facts['num_classes']} classes")
    return 0


if __name__ == "__main__":
    run_command(main, "python -m fusedembed_mlimages.convert")

"""The release's post-training scripts as commands on a fusedembed checkpoint:

    python -m fusedembed_multigrain finetune-p RECIPE CKPT [OVERRIDES] --size 500 --out p.pt
    python -m fusedembed_multigrain whiten RECIPE CKPT [OVERRIDES] --images DIR --size 500 --out white.pt
    python -m fusedembed_multigrain evaluate RECIPE CKPT [OVERRIDES] --benchmark holidays --root DIR --size 500

(the recipe's dotted overrides, if any, right after the checkpoint)

``finetune-p`` (finetune_p.py) trains p on ``--images-per-class`` (50) images per class of
the recipe's train split at ``--size`` (largest side); ``--cross-validate`` picks p among
``--candidates`` by accuracy on the recipe's val split instead. ``whiten`` (whiten.py) fits
the PCA whitening on the images of a folder and integrates it. Both write a checkpoint that
``fusedembed eval`` / ``embed`` and ``evaluate`` read like the trainer's. ``evaluate`` prints
the benchmark's scores as JSON.
"""

import argparse
import json
from pathlib import Path

import torch

from fusedembed import build, load_recipe

from .finetune_p import cross_validate_p, finetune_p, select_per_class
from .retrieval import evaluate, list_images
from .whiten import whiten_model


def _model(recipe, checkpoint, device):
    from fusedembed.trainer import load_model

    return load_model(recipe, checkpoint, device=device)


def _save(model, checkpoint, out) -> Path:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out


def _split_images(recipe, split, per_class=None):
    data = build("dataset", getattr(recipe.data, split), split=split)
    labels = data.labels.tolist()
    idx = select_per_class(labels, per_class) if per_class else range(len(labels))
    return [data.raw_image(i) for i in idx], [labels[i] for i in idx]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected an integer > 0, got {text!r}")
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusedembed_multigrain", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("finetune-p", "whiten", "evaluate"):
        s = sub.add_parser(name)
        s.add_argument("recipe")
        s.add_argument("checkpoint")
        s.add_argument("--size", type=_positive_int, default=224, help="test resolution s* (largest side)")
        s.add_argument("--device", default="cpu")
        s.add_argument("overrides", nargs="*", help="dotted key=value overrides of the recipe")
        if name != "evaluate":
            s.add_argument("--out", required=True, help="the checkpoint to write")
    ft = sub.choices["finetune-p"]
    ft.add_argument("--images-per-class", type=_positive_int, default=50)
    ft.add_argument("--lr", type=float, default=0.005)
    ft.add_argument("--cross-validate", action="store_true")
    ft.add_argument("--candidates", type=float, nargs="+", default=[1, 2, 3, 4, 5, 6, 8])
    wh = sub.choices["whiten"]
    wh.add_argument("--images", required=True, help="folder of whitening images (jpg/png)")
    wh.add_argument("--no-include-last", action="store_true", help="leave the constant channel out of the PCA")
    ev = sub.choices["evaluate"]
    ev.add_argument("--benchmark", required=True, choices=["holidays", "ukbench", "copydays", "roxford5k", "rparis6k"])
    ev.add_argument("--root", required=True)
    ev.add_argument("--rotations", default=None, help="Holidays rotation list (YAML/JSON)")
    ev.add_argument("--distractors", default=None, help="Copydays distractor folder")
    ev.add_argument("--no-crop-query", action="store_true", help="revisited: full query images")
    args = p.parse_args(argv)
    if args.command == "whiten":
        whitening_images = list_images(args.images)
        if len(whitening_images) < 2:     # a PCA of one feature vector has no directions
            p.error(f"--images: expected a folder of at least 2 images (jpg/png) to fit the whitening on, "
                    f"found {len(whitening_images)} in {args.images!r}")

    recipe = load_recipe(args.recipe, args.overrides)
    model = _model(recipe, args.checkpoint, args.device)
    if args.command == "finetune-p":
        if args.cross_validate:
            images, labels = _split_images(recipe, "val")
            best, scores = cross_validate_p(model, images, labels, args.size, args.candidates, device=args.device)
            print(json.dumps({"p": best, "accuracy_by_p": scores}))
        else:
            images, labels = _split_images(recipe, "train", args.images_per_class)
            print(json.dumps({"p": finetune_p(model, images, labels, args.size, lr=args.lr, device=args.device)}))
        print(f"wrote {_save(model, args.checkpoint, args.out)}")
    elif args.command == "whiten":
        whiten_model(model, whitening_images, args.size, args.device, include_last=not args.no_include_last)
        print(f"wrote {_save(model, args.checkpoint, args.out)}")
    else:
        scores = evaluate(model, args.benchmark, args.root, device=args.device, size=args.size,
                          rotations=args.rotations, distractors=args.distractors,
                          crop_query=not args.no_crop_query)
        print(json.dumps(scores))
    return 0

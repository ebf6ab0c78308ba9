"""Commands of the alignment plugin.

    python -m fusedembed_alignment align MODEL --image FILE --boxes "x0,y0,x1,y1;..." \\
        --sentence "a red circle left of a blue square" [--beta 2] [--out snippets.png]
    python -m fusedembed_alignment snippets RUN_DIR_OR_CHECKPOINT --out snippets.jsonl [--split train]
        [--beta 2] [data.train.num_images=2000 ...]
    python -m fusedembed_alignment vocab DATASET_JSON OUT [--min-count 5]

``align``: a trained model (checkpoint or exported folder) aligns the sentence's words to the
image's regions (the whole image + the boxes, in pixels of the image file; or ``--boxes-file``,
a detections file as ``alignment/karpathy_boxes`` reads, with ``--boxes-key`` the entry to use)
and prints the snippets: each run of words on one region, with its box and score; ``--out``
writes the picture with each box labelled by its snippet.
``snippets``: the trained model (a run directory stands for its best.pt, else last.pt) decodes
every image of the recipe's ``--split`` with each of its own captions, batched on the model's
device, and writes the snippets on boxes as ``alignment/region_snippets`` reads them: JSONL
``{"image": i, "box": [x0, y0, x1, y1], "snippet": "..."}``, image i of that split, the box in
pixels of its image file. Overrides of ``data.*`` and ``trainer.*`` (batch size, workers) apply
to the checkpoint's recipe; the model is the checkpoint's.
``vocab``: writes the vocabulary of a Karpathy split JSON's training captions (words seen
``--min-count`` times, lower-cased) for the ``vocab_path`` of the recipes.
"""

import argparse
from pathlib import Path

import torch

from fusedembed.errors import run_command


def _parse_boxes(text: str) -> torch.Tensor:
    rows = [r for r in text.split(";") if r.strip()]
    try:
        boxes = torch.tensor([[float(v) for v in r.split(",")] for r in rows], dtype=torch.float32)
    except ValueError:
        raise SystemExit(f"--boxes: expected 'x0,y0,x1,y1;...' numbers, got {text!r}") from None
    if boxes.numel() and (boxes.dim() != 2 or boxes.shape[1] != 4):
        raise SystemExit(f"--boxes: expected 4 numbers per box, got {text!r}")
    boxes = boxes.reshape(-1, 4)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        # A box without area aligns no word; most often it is x,y,w,h given for x0,y0,x1,y1.
        if not (x0 < x1 and y0 < y1):
            raise SystemExit(f"--boxes: expected x0 < x1 and y0 < y1 (corners, in pixels), got box {i + 1} "
                             f"{rows[i].strip()!r}")
    return boxes


def align(args) -> int:
    from fusedembed.inference import decode_image, load_embedder

    from .align import decode, draw_snippets, snippets
    from .data import read_detections

    if args.boxes_file:
        dets = read_detections(args.boxes_file)
        key = args.boxes_key or Path(args.image).name
        if key not in dets:
            raise SystemExit(f"--boxes-file: {args.boxes_file} has no entry {key!r} (give --boxes-key)")
        boxes = torch.from_numpy(dets[key])
    else:
        boxes = _parse_boxes(args.boxes or "")
    try:   # before the model loads: a bad file is found at once
        image = decode_image(args.image)
    except (ValueError, OSError) as err:
        raise SystemExit(f"--image: {err}") from None
    embedder = load_embedder(args.model, device=args.device)
    x = embedder.image_transform(image)
    scale = torch.tensor([x.shape[2] / image.shape[2], x.shape[1] / image.shape[1]] * 2)
    text = embedder.text_batch([args.sentence])
    batch = {"image": x[None], "boxes": (boxes * scale)[None], "num_objects": torch.tensor([len(boxes)]), **text}
    batch = {k: v.to(embedder.device) for k, v in batch.items()}
    with torch.no_grad():
        out = embedder.model(batch)
    if "regions" not in out or "words" not in out:
        raise SystemExit(f"{args.model}: not an alignment model (its outputs are {', '.join(sorted(out))})")
    regions, words = out["regions"].float().cpu(), out["words"].float().cpu()
    counts, lengths = out["num_regions"].cpu(), out["lengths"].cpu()
    assignment, energy = decode(regions, words, args.beta, counts, lengths)
    ref = embedder.reference()
    ids = text["tokens"][0, :int(lengths[0])].tolist()
    tokens = ref.vocab.decode(ids) if hasattr(ref, "vocab") else [str(i) for i in ids]
    runs = snippets(regions, words, assignment, [tokens])[0]
    print(f"{len(runs)} snippets (beta {args.beta:g}, MRF energy {float(energy[0]):.3f}; "
          f"{int(counts[0])} regions: the whole image + {int(counts[0]) - 1} boxes)")
    for snip in runs:
        where = "whole image" if snip.region == 0 else f"box {snip.region - 1} {boxes[snip.region - 1].tolist()}"
        print(f"  {snip.words!r:40s} -> {where}  score {snip.score:.3f}")
    if args.out:
        draw_snippets(image, boxes, runs).save(args.out)
        print(f"wrote {args.out}")
    return 0


SPLITS = ("train", "val", "test")


def checkpoint_of(path: str) -> Path:
    """RUN_DIR_OR_CHECKPOINT as load_embedder takes it: a run directory is its best.pt, else last.pt."""
    p = Path(path).expanduser()
    expected = ("expected a checkpoint (runs/x/best.pt), a run directory holding best.pt or last.pt, "
                "or an exported folder (model.safetensors + config.yaml)")
    if not p.exists():
        raise SystemExit(f"RUN_DIR_OR_CHECKPOINT: {expected}; got {path!r}, which does not exist")
    if p.is_dir() and not (p / "model.safetensors").is_file():
        found = [p / n for n in ("best.pt", "last.pt") if (p / n).is_file()]
        if not found:
            raise SystemExit(f"RUN_DIR_OR_CHECKPOINT: {expected}; got the folder {path!r}, which holds none of them")
        return found[0]
    return p


def split_recipe(embedder, split: str, overrides):
    """The checkpoint's recipe with the data/trainer overrides, checked to have ``split``."""
    from fusedembed.config import apply_overrides, to_dict, validate

    wrong = [o for o in overrides if not o.startswith(("data.", "trainer."))]
    if wrong:
        raise SystemExit(f"override {wrong[0]!r}: expected data.* or trainer.* (the model is the checkpoint's)")
    recipe = validate(apply_overrides(to_dict(embedder.stage_recipe), overrides), check=True,
                      source=embedder.source)
    have = [s for s in SPLITS if getattr(recipe.data, s) is not None]
    if split not in have:
        raise SystemExit(f"--split: expected a split the recipe has data for ({', '.join(have)}), got {split!r}")
    return recipe


def split_snippets_command(args) -> int:
    from fusedembed import build
    from fusedembed.config import RecipeError
    from fusedembed.data import DataError
    from fusedembed.inference import ModelError, load_embedder

    from .align import region_records, split_snippets, write_jsonl

    try:
        embedder = load_embedder(checkpoint_of(args.model), device=args.device)
    except ModelError as err:
        raise SystemExit(f"RUN_DIR_OR_CHECKPOINT: {err}") from None
    if not hasattr(embedder.model, "encode_regions"):
        raise SystemExit(f"RUN_DIR_OR_CHECKPOINT: expected an alignment/alignment model, got "
                         f"{embedder.stage_recipe.model.get('name')!r} ({args.model})")
    try:
        recipe = split_recipe(embedder, args.split, args.overrides)
    except RecipeError as err:
        raise SystemExit(f"OVERRIDES: {err}") from None
    try:
        dataset = build("dataset", getattr(recipe.data, args.split), split=args.split)
    except (DataError, FileNotFoundError) as err:
        raise SystemExit(f"--split {args.split}: the recipe's data.{args.split} does not build: {err}") from None
    if not hasattr(dataset, "boxes") or not hasattr(dataset, "captions_of"):
        raise SystemExit(f"--split {args.split}: expected a caption dataset with boxes (scenes, "
                         f"alignment/karpathy_boxes), got {type(dataset).__name__}")
    cfg = recipe.trainer
    pairs = split_snippets(embedder.model, dataset, args.beta, device=embedder.device,
                           batch_size=cfg.eval_batch_size or cfg.batch_size, workers=cfg.workers,
                           progress=False if args.no_progress else None)
    left_out = 0

    def records():
        nonlocal left_out
        for image, runs in pairs:
            recs, dropped = region_records(image, runs, dataset.boxes(image))
            left_out += dropped
            yield from recs

    count = write_jsonl(args.out, records())
    print(f"wrote {args.out}: {count} snippets on boxes of the {dataset.num_images} {args.split} images "
          f"x their {dataset.num_captions} captions (beta {args.beta:g}; {left_out} on the whole image or a "
          f"box without area left out); train the region generator with data.train.snippets={args.out} "
          f"and this split's dataset as its base")
    return 0


def vocab(args) -> int:
    from fusedembed.data import Vocab, read_json, tokenize

    doc = read_json(args.json)
    # The words of the training captions, as alignment/karpathy_boxes builds its vocabulary.
    tokens = [[t.lower() for t in (s.get("tokens") or tokenize(s.get("raw", "")))] for im in doc.get("images", [])
              if im.get("split") in ("train", "restval") for s in im.get("sentences", [])]
    if not tokens:
        raise SystemExit(f"{args.json}: no training captions (images with split 'train' or 'restval')")
    v = Vocab.build(tokens, min_count=args.min_count)
    v.save(args.out)
    print(f"wrote {args.out}: {len(v)} entries (the words seen >= {args.min_count} times, <pad> and <unk>)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusedembed_alignment", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("align", help="snippets of a sentence on an image's boxes")
    a.add_argument("model", help="a checkpoint (runs/x/last.pt) or an exported folder")
    a.add_argument("--image", required=True)
    a.add_argument("--boxes", help="'x0,y0,x1,y1;...' in pixels of the image file")
    a.add_argument("--boxes-file", help="a detections file (JSON or npz, see fusedembed_alignment.data)")
    a.add_argument("--boxes-key", help="its entry for the image (default: the image's file name)")
    a.add_argument("--sentence", required=True)
    a.add_argument("--beta", type=float, default=2.0, help="reward for consecutive words on one region")
    a.add_argument("--out", help="write the picture here (PNG)")
    a.add_argument("--device", default=None)
    sn = sub.add_parser("snippets", help="snippets of every image x caption of a split, for region_snippets")
    sn.add_argument("model", metavar="RUN_DIR_OR_CHECKPOINT",
                    help="a run directory (its best.pt, else last.pt), a checkpoint or an exported folder")
    sn.add_argument("overrides", metavar="OVERRIDES", nargs="*", help="data.* / trainer.* key=value")
    sn.add_argument("--out", required=True, help="the JSONL to write")
    sn.add_argument("--split", default="train", help="the recipe's split to decode (default train)")
    sn.add_argument("--beta", type=float, default=2.0, help="reward for consecutive words on one region")
    sn.add_argument("--device", default=None)
    sn.add_argument("--no-progress", action="store_true", help="no progress bar (default: one at a terminal)")
    v = sub.add_parser("vocab", help="the vocabulary of a Karpathy split JSON's training captions")
    v.add_argument("json")
    v.add_argument("out")
    v.add_argument("--min-count", type=int, default=5)
    # Overrides may follow the options (`snippets RUN --out F data.train.root=D`): argparse
    # leaves those unparsed, so they are collected here, as the fusedembed command does.
    args, extra = p.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or args.command != "snippets"]
    if stray:
        p.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return {"align": align, "snippets": split_snippets_command, "vocab": vocab}[args.command](args)


if __name__ == "__main__":
    run_command(main, "python -m fusedembed_alignment")

"""The `snippets` command: a trained alignment model's snippets of a whole split, as the region
generator's data reads them."""

import json

import pytest
from fusedembed_alignment.__main__ import main
from fusedembed_alignment.align import decode, snippets
from fusedembed_alignment.evaluator import encode
from fusedembed_alignment.generator.datasets import region_snippets

import fusedembed

SPLIT = ["data.val.num_images=12", "data.val.train_images=40"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny alignment model trained a few steps on scenes, and the scenes' root."""
    from fusedembed.trainer import train

    root = tmp_path_factory.mktemp("scenes")
    recipe = fusedembed.load_recipe("alignment/scenes", [
        *(f"data.{s}.root={root}" for s in ("train", "val")), "data.train.num_images=40", "data.train.train_images=40",
        *SPLIT, "data.test=null", "trainer.max_steps=4", "trainer.epochs=1", "trainer.batch_size=20",
        "trainer.eval_batch_size=20", "trainer.workers=0", "trainer.device=cpu", "model.hidden=16", "model.word_dim=8"])
    run_dir = tmp_path_factory.mktemp("run")
    train(recipe, run_dir, out=lambda line: None)
    return run_dir, root


def expected_records(run_dir, beta):
    """The snippets on boxes of every (val image, own caption), decoded in one piece from the
    whole split's encoding (the retrieval evaluator's): what the batched command must match."""
    from fusedembed.trainer import eval_loader, load_model

    recipe = fusedembed.load_recipe(run_dir / "config.yaml", SPLIT)
    model = load_model(recipe, run_dir / "last.pt", device="cpu")
    ds = fusedembed.build("dataset", recipe.data.val, split="val")
    enc = encode(model, eval_loader(ds, recipe), device="cpu")
    g = enc["caption_to_image"]
    assignment, _ = decode(enc["regions"][g], enc["words"], beta, enc["num_regions"][g], enc["lengths"])
    words = [ds.vocab.decode(ds.tokens_of(j).tolist()) for j in range(ds.num_captions)]
    runs = snippets(enc["regions"][g], enc["words"], assignment, words)
    return ds, [{"image": int(g[j]), "box": ds.boxes(int(g[j]))[s.region - 1].tolist(), "snippet": s.words}
                for j in range(ds.num_captions) for s in runs[j] if s.region > 0]


def test_snippets_of_a_split_are_what_region_snippets_reads(run, tmp_path, capsys):
    run_dir, root = run
    out = tmp_path / "sub" / "snippets.jsonl"
    # Batches of 5 images (not a divisor of 12): captions must follow their images across batches.
    assert main(["snippets", str(run_dir), "--split", "val", "--out", str(out), "--device", "cpu",
                 "--beta", "0.5", "trainer.eval_batch_size=5", *SPLIT]) == 0
    assert f"wrote {out}:" in capsys.readouterr().out
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(set(r) == {"image", "box", "snippet"} for r in records)
    ds, expected = expected_records(run_dir, beta=0.5)
    assert records == expected and len({r["image"] for r in records}) > 1, records
    for rec in records:
        x0, y0, x1, y1 = rec["box"]
        assert 0 <= x0 < x1 <= ds.image_size and 0 <= y0 < y1 <= ds.image_size
        # A contiguous run of words of one of the image's own captions.
        assert any(f" {rec['snippet']} " in f" {' '.join(ds.vocab.decode(ds.tokens_of(j).tolist()))} "
                   for j in ds.captions_of(rec["image"]))
    regions = region_snippets("val", {"name": "scenes", "root": str(root), "num_images": 12, "train_images": 40,
                                      "seed": 0}, snippets=str(out), crop_size=16, view="image")
    assert len(regions) == len({(r["image"], tuple(r["box"])) for r in records})
    assert regions[0]["image"].shape == (3, 16, 16) and regions[0]["caption"] in regions.texts
    assert not [p.name for p in out.parent.iterdir() if p != out]          # no temporary left


def test_a_failure_part_way_leaves_no_file(run, tmp_path, monkeypatch):
    import fusedembed_alignment.align as align

    def broken(*args, **kwargs):
        raise RuntimeError("decode failed")

    out = tmp_path / "snippets.jsonl"
    out.write_text("old\n")
    monkeypatch.setattr(align, "snippets", broken)
    with pytest.raises(RuntimeError, match="decode failed"):
        main(["snippets", str(run[0]), "--split", "val", "--out", str(out), "--device", "cpu", *SPLIT])
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["snippets.jsonl"]


@pytest.mark.parametrize("args, message", [
    (["nowhere/last.pt"], "RUN_DIR_OR_CHECKPOINT: expected a checkpoint (runs/x/best.pt), a run directory "
                          "holding best.pt or last.pt, or an exported folder (model.safetensors + config.yaml); "
                          "got 'nowhere/last.pt', which does not exist"),
    (["EMPTY"], "RUN_DIR_OR_CHECKPOINT: expected a checkpoint (runs/x/best.pt), a run directory holding best.pt "
                "or last.pt, or an exported folder (model.safetensors + config.yaml); got the folder 'EMPTY', "
                "which holds none of them"),
    (["RUN", "--split", "test"], "--split: expected a split the recipe has data for (train, val), got 'test'"),
    (["RUN", "model.hidden=8"], "override 'model.hidden=8': expected data.* or trainer.* (the model is the "
                                "checkpoint's)"),
])
def test_a_bad_argument_is_refused_in_one_line(run, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    names = {"RUN": str(run[0]), "EMPTY": str(tmp_path / "empty")}
    args = [names.get(a, a) for a in args]
    message = message.replace("'EMPTY'", repr(names["EMPTY"]))
    with pytest.raises(SystemExit) as exit_:
        main(["snippets", *args, "--out", str(tmp_path / "s.jsonl"), "--device", "cpu"])
    assert str(exit_.value.code) == message and "\n" not in message
    assert not (tmp_path / "s.jsonl").exists()

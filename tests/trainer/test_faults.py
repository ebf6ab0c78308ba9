"""Faults as a user meets them: a training process killed with SIGKILL mid-epoch and resumed,
checkpoints that cannot be written, bad recipe values."""

import json

import pytest
import torch

from fusedembed import cli
from fusedembed.config import RecipeError, to_dict, validate
from fusedembed.testing import assert_resumes_exactly
from fusedembed.trainer import CheckpointError, train
from fusedembed.trainer import checkpoint as ckpt


def dualpath_tiny(scenes_root, workers):
    """dualpath/scenes shrunk (dropout 0.5, random position shift, instance + ranking
    losses, two stages) with a checkpoint every 3 steps."""
    from fusedembed_dualpath.testing import tiny_overrides

    from fusedembed import load_recipe
    return load_recipe("dualpath/scenes", [*tiny_overrides(scenes_root), "trainer.checkpoint_every=3",
                                           f"trainer.workers={workers}", "stages.0.trainer.epochs=1"])


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(scenes_root, tmp_path, workers):
    pytest.importorskip("fusedembed_dualpath")
    # stage I: 4 steps; stage II: 2 epochs of 4. Killed after global step 11 = stage II step 7;
    # last.pt holds stage II step 6 (its second epoch, batch 2 of 4), metrics.jsonl rows up to
    # step 11 (the resume drops 7..11 and logs them again).
    states = assert_resumes_exactly(dualpath_tiny(scenes_root, workers), tmp_path, kill_at=11)
    cut = states["cut"]
    assert (cut["stage_name"], cut["epoch"], cut["batch"], cut["step"]) == ("stage2", 1, 2, 6)
    assert states["full"]["global_step"] == 12
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in ln]
    assert steps == list(range(1, 13))                                 # no step twice, none missing


def test_unwritable_checkpoint_names_the_path_and_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save({"step": 1}, path)
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        open(f, "wb").write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint '.*last.pt': No space left on device"):
        ckpt.save({"step": 2}, path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".last.pt.tmp*"))                    # its temporary file is gone


def test_stale_temporaries_of_a_killed_write_are_removed_at_start(make_recipe, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    stale = tmp_path / ".last.pt.tmp12345"
    stale.write_bytes(b"half a checkpoint")
    train(make_recipe(trainer={"max_steps": 1}), tmp_path, out=lambda _: None)
    assert not stale.exists() and (tmp_path / "last.pt").is_file()


@pytest.mark.parametrize("key, value, message", [
    ("grad_clip_norm", -1, "trainer.grad_clip_norm must be > 0, got -1.0"),
    ("epochs", 0, "trainer.epochs must be >= 1, got 0"),
    ("max_steps", -1, "trainer.max_steps must be >= 0, got -1"),
    ("batch_size", 0, "trainer.batch_size must be >= 1, got 0"),
    ("accumulate", 0, "trainer.accumulate must be >= 1, got 0"),
    ("log_every", 0, "trainer.log_every must be >= 1, got 0"),
    ("scheduler", {"name": "step", "step_size": 0}, "trainer.scheduler.step_size must be >= 1, got 0"),
])
def test_out_of_range_trainer_values_are_refused_naming_key_and_range(make_recipe, key, value, message):
    with pytest.raises(RecipeError, match=message.replace(".", r"\.")):
        make_recipe(trainer={key: value})


def test_cli_reports_a_bad_value_in_one_line(make_recipe, dump_recipe, tmp_path, capsys):
    cfg = dump_recipe(make_recipe(), tmp_path / "r.yaml")
    assert cli.main(["train", str(cfg), "--run-dir", str(tmp_path / "run"), "trainer.grad_clip_norm=-1"]) == 1
    err = capsys.readouterr().err
    assert "trainer.grad_clip_norm must be > 0, got -1.0" in err and "Traceback" not in err


def test_cli_reports_a_missing_data_file_in_one_line(make_recipe, dump_recipe, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()                                           # a folder without its captions.jsonl
    recipe = make_recipe()
    cfg = dump_recipe(recipe, tmp_path / "r.yaml")
    assert cli.main(["train", str(cfg), "--run-dir", str(tmp_path / "run"), "data.train.name=caption_folder",
                     f"data.train.root={folder}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fusedembed train: error: ") and "captions.jsonl" in err and "file not found" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_stage_override_out_of_range_names_the_stage(make_recipe):
    tree = to_dict(make_recipe())
    tree["stages"] = [{"name": "two", "trainer": {"accumulate": 0}}]
    with pytest.raises(RecipeError, match=r"stages\[0\] \(two\): trainer\.accumulate must be >= 1, got 0"):
        validate(tree)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_without_a_gpu_says_what_to_do_in_one_line(make_recipe, dump_recipe, tmp_path, capsys):
    cfg = dump_recipe(make_recipe(), tmp_path / "r.yaml")
    assert cli.main(["train", str(cfg), "--run-dir", str(tmp_path / "run"), "trainer.device=cuda"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no CUDA GPU is visible" in err and "trainer.device=cpu" in err


def test_cli_eval_without_evaluators_says_what_to_do_in_one_line(make_recipe, dump_recipe, tmp_path, capsys):
    base = make_recipe(trainer={"max_steps": 1})
    train(base, tmp_path / "run", out=lambda _: None)
    cfg = dump_recipe(make_recipe(evaluators=[], data={"train": base.data.train, "test": base.data.val}),
                      tmp_path / "r.yaml")
    assert cli.main(["eval", str(cfg), "--checkpoint", str(tmp_path / "run" / "last.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lists no evaluators" in err and "evaluators:" in err

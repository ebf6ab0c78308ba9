"""Faults as a user meets them: a training process killed with SIGKILL mid-epoch and resumed,
checkpoints that cannot be written, bad recipe values."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from fusedembed import cli
from fusedembed.config import RecipeError, to_dict, validate
from fusedembed.trainer import CheckpointError, train
from fusedembed.trainer import checkpoint as ckpt

# Trains the recipe at argv[1] into argv[2] and SIGKILLs itself after global step argv[3]:
# no handler runs, no checkpoint is written on the way out.
CHILD = """
import os, signal, sys
from fusedembed import load_recipe
from fusedembed.trainer import train

kill_at = int(sys.argv[3])

def on_step(trainer):
    if trainer.global_step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

train(load_recipe(sys.argv[1]), sys.argv[2], out=lambda _: None, on_step=on_step)
"""


def killed_run(recipe_path, run_dir, kill_at):
    # the parent's thread count: CPU reductions sum in a thread-count-dependent order
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run([sys.executable, "-c", CHILD, str(recipe_path), str(run_dir), str(kill_at)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def assert_bit_identical(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_bit_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bit_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def dualpath_tiny(scenes_root, tmp_path, workers):
    """dualpath/scenes shrunk (dropout 0.5, random position shift, instance + ranking
    losses, two stages) with a checkpoint every 3 steps."""
    from fusedembed_dualpath.testing import tiny_overrides

    from fusedembed import load_recipe
    recipe = load_recipe("dualpath/scenes", [*tiny_overrides(scenes_root), "trainer.checkpoint_every=3",
                                             f"trainer.workers={workers}", "stages.0.trainer.epochs=1"])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(to_dict(recipe)))
    return recipe, path


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(scenes_root, tmp_path, workers):
    pytest.importorskip("fusedembed_dualpath")
    recipe, path = dualpath_tiny(scenes_root, tmp_path, workers)
    # stage I: 4 steps; stage II: 2 epochs of 4. Killed after global step 11 = stage II step 7;
    # last.pt holds stage II step 6 (its second epoch, batch 2 of 4), metrics.jsonl rows up to
    # step 11.
    killed_run(path, tmp_path / "cut", kill_at=11)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (cut["stage_name"], cut["epoch"], cut["batch"], cut["step"]) == ("stage2", 1, 2, 6)
    logged = [json.loads(ln)["step"] for ln in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) == 11
    train(recipe, tmp_path / "cut", resume=tmp_path / "cut" / "last.pt", out=lambda _: None)
    train(recipe, tmp_path / "full", out=lambda _: None)

    full, resumed = (torch.load(tmp_path / d / "last.pt", weights_only=True) for d in ("full", "cut"))
    assert resumed["global_step"] == full["global_step"] == 12
    for key in ("model", "losses", "optimizers", "schedule", "rng"):
        assert_bit_identical(full[key], resumed[key], key)
    rows = {d: [json.loads(ln) for ln in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("full", "cut")}
    steps = [r["step"] for r in rows["cut"] if "loss" in r]
    assert steps == sorted(set(steps)) == list(range(1, 13))          # no step twice, none missing
    assert [r["loss"] for r in rows["cut"] if "loss" in r] == [r["loss"] for r in rows["full"] if "loss" in r]


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

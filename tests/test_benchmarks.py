"""The benchmark scripts run as their docstrings say and write rows a script can compare: a GPU
session has minutes for them, and a script that breaks there costs its measurements."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(tmp_path, scenes_root):
    def run(name, *args):
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), "--device", "cpu", *args],
                              capture_output=True, text=True, timeout=600,
                              env={**os.environ, "FUSEDEMBED_DATA": scenes_root}, cwd=tmp_path)
    return run


def by_case(rows):
    cases = {}
    for r in rows:
        cases.setdefault(r["case"], {})[r["impl"]] = r
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("name, args", [
    ("bench_gem_pool.py", ["--only", "eager"]),                  # torch.compile's CPU builds take minutes
    ("bench_sampled_sigmoid_loss.py", ["--only", "eager"]),
    ("bench_mrf_viterbi.py", []),
])
def test_op_benchmarks_time_fusedembed_beside_a_baseline(bench, tmp_path, name, args):
    out = bench(name, "--quick", "--repeats", "2", "--json", str(tmp_path / "rows.json"), *args)
    assert out.returncode == 0 and "skipped" not in out.stderr, out.stderr[-3000:]
    cases = by_case(json.loads((tmp_path / "rows.json").read_text()))
    assert len(cases) >= 2
    for case, impls in cases.items():
        assert "fusedembed" in impls and len(impls) >= 2, case
        assert impls["fusedembed"]["fusedembed_speedup"] == 1.0
        assert all(r["us"] > 0 and r["device"] == "cpu" for r in impls.values())
    assert next(iter(cases)) in out.stdout          # and the table a person reads


def test_profile_shows_what_each_implementation_runs_per_call(bench):
    out = bench("bench_mrf_viterbi.py", "--quick", "--repeats", "2", "--case", "crf B=64", "--profile")
    assert out.returncode == 0, out.stderr[-3000:]
    heads = [ln.split("(")[0].strip() for ln in out.stdout.splitlines() if ln.startswith("profile ")]
    assert heads == ["profile  crf B=64 N=16 M=20 / torch loop", "profile  crf B=64 N=16 M=20 / fusedembed"]
    assert "fusedembed::crf_viterbi" in out.stdout and "aten::amax" in out.stdout   # the op; the loop's ops
    assert "mrf B=" not in out.stdout                                                # --case chose one


def test_an_unknown_case_is_refused_naming_the_cases(bench):
    out = bench("bench_mrf_viterbi.py", "--quick", "--case", "B=7")
    assert out.returncode == 1
    assert "--case: no case name contains 'B=7'; the cases: mrf B=64 N=16 M=20, " in out.stderr


def test_an_unknown_recipe_is_refused_before_any_run(bench):
    out = bench("bench_train_step.py", "--recipe", "multigrain/scenes", "--recipe", "multigrain/scenez")
    assert out.returncode == 2 and "--recipe: unknown recipe 'multigrain/scenez' (did you mean" in out.stderr
    assert out.stdout == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_recipe_that_cannot_run_is_reported_and_fails_the_run(bench):
    out = bench("bench_train_step.py", "--device", "cuda", "--recipe", "multigrain/scenes", "--steps", "3",
                "--warmup", "1", "--runs", "1")
    assert out.returncode == 1 and out.stderr.rstrip().endswith("failed: multigrain/scenes")
    assert "multigrain/scenes: skipped (UsageError: trainer.device='cuda' but no CUDA GPU is visible" in out.stderr


@pytest.mark.slow
def test_train_step_bench_runs_a_plugin_recipe_against_a_hand_loop(bench, tmp_path):
    out = bench("bench_train_step.py", "--recipe", "multigrain/scenes", "--steps", "6", "--warmup", "2",
                "--runs", "1", "--json", str(tmp_path / "rows.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    (impls,) = by_case(json.loads((tmp_path / "rows.json").read_text())).values()
    assert impls.keys() == {"trainer", "hand loop"}
    assert all(r["samples_per_s"] > 0 and r["case"] == "multigrain/scenes" for r in impls.values())
    assert "multigrain/scenes: trainer overhead vs hand loop: " in out.stdout


def test_index_bench_reports_recall_against_exact_search(bench, tmp_path):
    pytest.importorskip("faiss")
    out = bench("bench_index.py", "--quick", "--json", str(tmp_path / "rows.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["index"]: r for r in json.loads((tmp_path / "rows.json").read_text())["rows"]}
    assert rows["exact (cpu)"]["recall10@10"] == 1.0 and rows["faiss flat"]["recall10@10"] == 1.0
    assert all(0 < r["recall10@10"] <= 1 for r in rows.values())

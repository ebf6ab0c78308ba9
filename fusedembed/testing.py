"""Helpers for tests of fusedembed and of its plugins, and a pytest plugin (entry point
``pytest11``, so any test suite in an environment with fusedembed gets it):

- markers ``cuda`` (skipped when no CUDA GPU is visible; select the GPU half with
  ``pytest -m cuda``), ``extension`` (skipped without the compiled ``fusedembed._C``, e.g. under
  FUSEDEMBED_NO_EXTENSION=1) and ``slow``;
- fixtures ``registries`` (the installed plugins' registries, made active for the test;
  ``installed_registries`` for wider fixtures) and ``scenes_root`` (one cache folder of
  generated scenes data for the whole session);
- ``on_two_gloo_ranks`` (a function run on two CPU processes in a gloo group);
- ``assert_resumes_exactly`` (a training killed with SIGKILL, resumed, against an
  uninterrupted one) and ``assert_bit_identical`` for a plugin's resume tests.
"""

import pytest
import torch

# Absolute/relative tolerances of a kernel against the float64 reference, by input dtype.
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    torch.float16: dict(atol=1e-3, rtol=4e-3),
    torch.bfloat16: dict(atol=1e-2, rtol=2e-2),
}


def tolerance(dtype: torch.dtype) -> dict:
    return TOLERANCES[dtype]


def cpu_and_cuda():
    """Device parameters for ``pytest.mark.parametrize("device", cpu_and_cuda())``: "cuda" carries
    the ``cuda`` marker, so it is skipped without a GPU and selected by ``pytest -m cuda``."""
    return ("cpu", pytest.param("cuda", marks=pytest.mark.cuda))


def plugin_manager(*, builtin: bool = True, **plugins: str):
    """A PluginManager over the built-in plugin and the ``name="module"`` plugins given, whether
    installed or not, ignoring the FUSEDEMBED_* variables; for a plugin's own tests::

        regs = plugin_manager(example="fusedembed_example").registries
        with regs.active():
            model = fusedembed.build("model", fusedembed.load_recipe("example/tiny").model)
    """
    from importlib.metadata import EntryPoint

    from .plugins import BUILTIN, GROUP, PluginManager

    eps = ([BUILTIN] if builtin else []) + [EntryPoint(n, v, GROUP) for n, v in plugins.items()]
    return PluginManager(eps, env={})


def pytorch_crf_decode(emissions, mask, transitions, start, end):
    """pytorch-crf's ``CRF._viterbi_decode`` restated: (N, B, M) emissions, (N, B) bool mask,
    one Python list of tags per sequence. The semantics ``crf_viterbi`` matches (tests) and the
    peer-library baseline ``benchmarks/bench_mrf_viterbi.py`` times."""
    seq_length, batch = mask.shape
    score = start + emissions[0]
    history = []
    for i in range(1, seq_length):
        next_score = score.unsqueeze(2) + transitions + emissions[i].unsqueeze(1)
        next_score, indices = next_score.max(dim=1)
        score = torch.where(mask[i].unsqueeze(1), next_score, score)
        history.append(indices)
    score = score + end
    seq_ends = mask.long().sum(dim=0) - 1
    best = []
    for idx in range(batch):
        _, last = score[idx].max(dim=0)
        tags = [last.item()]
        for hist in reversed(history[: seq_ends[idx]]):
            last = hist[idx][tags[-1]]
            tags.append(last.item())
        best.append(tags[::-1])
    return best


# -- pytest plugin ---------------------------------------------------------------------------

def _gloo_rank(rank: int, port: int, fn, args: tuple, out) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        out[rank] = fn(rank, *args)
    finally:
        torch.distributed.destroy_process_group()


def on_two_gloo_ranks(fn, *args) -> dict:
    """``{rank: fn(rank, *args)}`` of two CPU processes joined in a gloo process group, for
    tests of collectives; ``fn`` must be importable by name (it is pickled to the processes)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:                      # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_gloo_rank, args=(port, fn, args, out), nprocs=2, join=True)
    return dict(out)


# Trains the recipe file argv[1] into argv[2] and SIGKILLs itself right after global step argv[3]:
# no handler runs, nothing is written on the way out.
_KILLED_CHILD = """
import os, signal, sys
from fusedembed import load_recipe
from fusedembed.trainer import train

def on_step(trainer):
    if trainer.global_step == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)

train(load_recipe(sys.argv[1]), sys.argv[2], out=lambda _: None, on_step=on_step)
"""


def train_killed_at(recipe, run_dir, step: int, timeout_s: float = 300) -> None:
    """Trains ``recipe`` into ``run_dir`` in a subprocess that is SIGKILLed after global step
    ``step``. The child gets this process's ``sys.path`` and intra-op thread count (CPU
    reductions sum in a thread-count-dependent order)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from .config import to_dict

    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path = run_dir.parent / f"{run_dir.name}.recipe.yaml"
    path.write_text(yaml.safe_dump(to_dict(recipe)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run([sys.executable, "-c", _KILLED_CHILD, str(path), str(run_dir), str(step)],
                          env=env, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == -signal.SIGKILL, f"the child was not killed at step {step}: " + done.stderr[-3000:]


def assert_bit_identical(a, b, where: str = "") -> None:
    """``a == b`` through nested dicts/lists/tuples, tensors compared bit for bit (and dtype)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_bit_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bit_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_resumes_exactly(recipe, tmp_path, kill_at: int) -> dict:
    """Kills a training of ``recipe`` after global step ``kill_at``, resumes it from its
    ``last.pt`` and trains it once uninterrupted: asserts the two end states (weights, loss
    state, optimizers, schedule, RNGs) are bit-identical and the logged losses equal, with no
    step logged twice. Returns ``{"cut", "full", "resumed"}`` checkpoints (``cut``: the one the
    resume started from) for further checks. The recipe must checkpoint before ``kill_at``."""
    import json

    from .trainer import train

    def loss_rows(run_dir):
        rows = (json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines())
        return [(r["step"], r["loss"]) for r in rows if "loss" in r]

    cut_dir = tmp_path / "cut"
    train_killed_at(recipe, cut_dir, kill_at)
    cut = torch.load(cut_dir / "last.pt", weights_only=True)
    assert max(step for step, _ in loss_rows(cut_dir)) <= kill_at
    train(recipe, cut_dir, resume=cut_dir / "last.pt", out=lambda _: None)
    train(recipe, tmp_path / "full", out=lambda _: None)
    full, resumed = (torch.load(d / "last.pt", weights_only=True) for d in (tmp_path / "full", cut_dir))
    assert resumed["global_step"] == full["global_step"] > kill_at
    for key in ("model", "losses", "optimizers", "schedule", "rng"):
        assert_bit_identical(full[key], resumed[key], key)
    steps = [step for step, _ in loss_rows(cut_dir)]
    assert steps == sorted(set(steps)), "a step was logged twice"
    assert loss_rows(cut_dir) == loss_rows(tmp_path / "full")
    return {"cut": cut, "full": full, "resumed": resumed}


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped when none is visible); "
                                       "run with `pytest -m cuda`")
    config.addinivalue_line("markers", "extension: needs the compiled fusedembed._C, which holds the ops' "
                                       "argument checks (skipped without it)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds (wheel builds, "
                                       "multi-process runs)")


def pytest_collection_modifyitems(config, items):
    from ._extension import has_extension

    skips = {}
    if not torch.cuda.is_available():
        skips["cuda"] = pytest.mark.skip(reason="no CUDA GPU visible")
    if not has_extension():
        skips["extension"] = pytest.mark.skip(reason="fusedembed._C is not built (or FUSEDEMBED_NO_EXTENSION is set)")
    for item in items:
        for name, skip in skips.items():
            if name in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def installed_registries():
    """The registries of the installed plugins (ignoring FUSEDEMBED_* variables), loaded once
    per session; use ``with installed_registries.active():`` in fixtures wider than a test."""
    from .plugins import PluginManager

    return PluginManager(env={}).registries


@pytest.fixture
def registries(installed_registries):
    """``installed_registries``, active for the test: ``fusedembed.build`` and
    ``fusedembed.load_recipe`` inside it use them."""
    with installed_registries.active():
        yield installed_registries


@pytest.fixture(scope="session")
def scenes_root(tmp_path_factory) -> str:
    """One folder for the scenes data the session generates (``scenes(..., root=scenes_root)``),
    so tests sharing a size share the files instead of generating them again."""
    return str(tmp_path_factory.mktemp("scenes-cache"))

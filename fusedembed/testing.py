"""Helpers for tests of fusedembed and of its plugins, and a pytest plugin (entry point
``pytest11``, so any test suite in an environment with fusedembed gets it):

- markers ``cuda`` (skipped when no CUDA GPU is visible; select the GPU half with
  ``pytest -m cuda``), ``extension`` (skipped without the compiled ``fusedembed._C``, e.g. under
  FUSEDEMBED_NO_EXTENSION=1) and ``slow``;
- fixtures ``registries`` (the installed plugins' registries, made active for the test;
  ``installed_registries`` for wider fixtures) and ``scenes_root`` (one cache folder of
  generated scenes data for the whole session).
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

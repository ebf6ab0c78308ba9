"""Checkpoints: plain dicts of tensors and Python scalars/strings/lists, so they load with
``torch.load(weights_only=True)``; written to a temporary file, then renamed over the old one,
so a crash mid-write never leaves a half checkpoint under the real name.

Version 2 holds everything an exact resume needs (the stage state, every RNG, the sampler
position); version 1 files still give their weights to ``eval``, ``export`` and ``load_model``
but cannot be resumed from.
"""

import os
from pathlib import Path

import torch

from ..errors import UserError

FORMAT = "fusedembed-checkpoint"
VERSION = 2
READABLE = (1, 2)         # versions whose weights load; only VERSION resumes
REQUIRED = ("format", "version", "stage", "epoch", "batch", "step", "model", "losses",
            "optimizers", "schedule", "rng", "config")


class CheckpointError(UserError, RuntimeError):
    pass


def save(state: dict, path) -> Path:
    """Writes ``state`` to ``path`` through a temporary file: on failure (disk full, read-only
    directory) the temporary file is removed, the previous file is left intact and
    CheckpointError names the path and the cause."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:        # torch.save reports a full disk as RuntimeError
        tmp.unlink(missing_ok=True)
        cause = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        raise CheckpointError(f"cannot write checkpoint {str(path)!r}: {cause}; the previous "
                              f"checkpoint there (if any) is unchanged") from None
    return path


def remove_stale_temporaries(run_dir) -> list:
    """Deletes ``.<name>.tmp<pid>`` files a killed write left in ``run_dir``; returns them."""
    stale = sorted(Path(run_dir).glob(".*.pt.tmp*")) if Path(run_dir).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load(path, *, resume: bool = False) -> dict:
    """The checkpoint at ``path``; CheckpointError names what is wrong with a missing,
    empty, truncated, foreign or (for ``resume``) older file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes); it is not a checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip/pickle errors of a truncated or non-torch file
        first = (str(err).splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: "
                              f"{first}); it is truncated, corrupted or not a torch file") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = (f"a dict with keys {sorted(map(str, state))[:8]}" if isinstance(state, dict)
                else type(state).__name__)
        raise CheckpointError(f"{str(path)!r} is not a fusedembed training checkpoint: expected a dict "
                              f"with format={FORMAT!r}, got {what}")
    version = state.get("version")
    if version not in READABLE:
        raise CheckpointError(f"{str(path)!r}: checkpoint version {version!r}, this fusedembed reads "
                              f"versions {', '.join(map(str, READABLE))}")
    if resume and version != VERSION:
        raise CheckpointError(f"{str(path)!r}: checkpoint version {version} cannot be resumed (it lacks "
                              f"the state of an exact resume; version {VERSION} has it); start a new run, "
                              f"or use the file with eval/export")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{str(path)!r}: checkpoint lacks {', '.join(missing)}")
    return state

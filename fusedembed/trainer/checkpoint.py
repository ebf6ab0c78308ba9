"""Checkpoints: plain dicts of tensors and Python scalars/strings/lists, so they load with
``torch.load(weights_only=True)``; written to a temporary file, then renamed over the old one,
so a crash mid-write never leaves a half checkpoint under the real name."""

import os
import random
from pathlib import Path

import numpy as np
import torch

FORMAT = "fusedembed-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "stage", "epoch", "batch", "step", "model", "losses",
            "optimizers", "schedule", "rng", "config")


class CheckpointError(RuntimeError):
    pass


def save(state: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
    os.replace(tmp, path)
    return path


def load(path) -> dict:
    """The checkpoint at ``path``; CheckpointError names what is wrong with a missing,
    truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip/pickle errors of a truncated or non-torch file
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}); it is truncated, corrupted or not "
                              f"a torch file") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = (f"a dict with keys {sorted(map(str, state))[:8]}" if isinstance(state, dict)
                else type(state).__name__)
        raise CheckpointError(f"{str(path)!r} is not a fusedembed training checkpoint: expected a dict "
                              f"with format={FORMAT!r}, got {what}")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{str(path)!r}: checkpoint version {state.get('version')!r}, this "
                              f"fusedembed reads version {VERSION}")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{str(path)!r}: checkpoint lacks {', '.join(missing)}")
    return state


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states as tensors and plain types."""
    py = random.getstate()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": [py[0], list(py[1]), py[2]],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

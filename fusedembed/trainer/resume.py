"""What a resume may change: only keys that cannot change the trained weights (where it stops,
how often it logs, checkpoints and evaluates, the device, the number of data workers as long
as there are some: items made in workers are seeded by their position, in the main process they
draw from the global generators). Anything else
(seed, batch size, model, losses, data, schedule) would silently give another run, so it is
refused, naming each changed key with its old and new value."""

from typing import Iterator, List, Tuple

from ..config import to_dict
from .checkpoint import CheckpointError

# Dotted keys a resumed run may set differently; "stages" entries compare key by key too.
MAY_CHANGE = {"description", "data.test", "trainer.max_steps", "trainer.log_every", "trainer.checkpoint_every",
              "trainer.eval_every", "trainer.device", "trainer.eval_batch_size",
              "trainer.dist_timeout_s"}


def _flat(tree, prefix: str = "") -> Iterator[Tuple[str, object]]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, f"{prefix}{k}.")
    elif isinstance(tree, list) and tree and all(isinstance(e, dict) and "name" in e for e in tree) \
            and prefix == "stages.":
        for e in tree:
            yield from _flat({k: v for k, v in e.items() if k != "name"}, f"stages[{e['name']}].")
    else:
        yield prefix[:-1], tree


def _allowed(key: str) -> bool:
    bare = key.split("].", 1)[1] if key.startswith("stages[") else key
    return any(bare == k or bare.startswith(k + ".") for k in MAY_CHANGE)


def changed_keys(old: dict, new: dict) -> List[str]:
    """``key: old -> new`` for each key that differs and may not."""
    a, b = dict(_flat(old)), dict(_flat(new))
    missing = object()

    def show(v):
        return "(unset)" if v is missing else repr(v)

    def same(key, va, vb):
        if key.endswith("trainer.workers") and isinstance(va, int) and isinstance(vb, int):
            return (va > 0) == (vb > 0)
        return va == vb or _allowed(key)

    return [f"{key}: {show(a.get(key, missing))} -> {show(b.get(key, missing))}"
            for key in sorted(a.keys() | b.keys()) if not same(key, a.get(key, missing), b.get(key, missing))]


def check_resumable(state: dict, recipe, stage_names: List[str], path) -> None:
    """Raises CheckpointError when ``state`` cannot resume ``recipe`` exactly."""
    si = int(state["stage"])
    if si >= len(stage_names) or state.get("stage_name") != stage_names[si]:
        raise CheckpointError(f"{path}: checkpoint is of stage {state.get('stage_name')!r} (#{si}), but "
                              f"this recipe's stages are {stage_names}")
    changes = changed_keys(state["config"], to_dict(recipe))
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise CheckpointError(f"{path}: cannot resume: the recipe differs from the checkpoint's in {shown} "
                              f"(a resume continues the same run; start a new run directory to change these)")

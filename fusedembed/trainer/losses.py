"""The recipe's losses: built from ``losses`` entries, fed from model outputs and batch fields,
and their state carried from one stage to the next."""

import inspect
from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import nn

from ..plugins import build, get_registry
from ..recipe import split_loss


@dataclass
class LossTerm:
    label: str                      # the logged name: the registered name, made unique
    weight: float
    sources: Dict[str, str]         # forward argument -> model output or batch key
    optional: frozenset             # arguments with a default: passed only when found


def build_losses(entries):
    modules, terms, seen = nn.ModuleList(), [], {}
    for entry in entries:
        cfg, weight, inputs = split_loss(entry)
        name = get_registry("loss").get(cfg["name"]).short     # logged as loss/<bare name>
        module = build("loss", cfg)
        params = {k: p for k, p in inspect.signature(module.forward).parameters.items()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        unknown = [k for k in inputs if k not in params]
        if unknown:
            raise ValueError(f"loss {name!r}: inputs maps {unknown}, but its forward takes "
                             f"{', '.join(params) or 'nothing'}")
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}_{seen[name]}"
        modules.append(module)
        terms.append(LossTerm(label, weight, {a: inputs.get(a, a) for a in params},
                              frozenset(a for a, p in params.items() if p.default is not p.empty)))
    if not terms:
        raise ValueError("the recipe has no losses: list at least one under `losses`")
    return modules, terms


def loss_values(modules, terms, outputs: dict, batch: dict) -> List[torch.Tensor]:
    values = []
    for module, term in zip(modules, terms):
        kwargs = {}
        for arg, src in term.sources.items():
            if src in outputs:
                kwargs[arg] = outputs[src]
            elif src in batch:
                kwargs[arg] = batch[src]
            elif arg not in term.optional:
                raise KeyError(f"loss {term.label!r} needs {arg!r} from {src!r}, which is neither a model "
                               f"output ({', '.join(outputs)}) nor a batch field ({', '.join(batch)}); "
                               f"map it with inputs: {{{arg}: <key>}}")
        value = module(**kwargs)
        if value.dim() != 0:
            raise ValueError(f"loss {term.label!r} returned shape {tuple(value.shape)}, expected a scalar")
        values.append(value.float())
    return values


def loss_states(modules, terms) -> Dict[str, dict]:
    return {t.label: m.state_dict() for m, t in zip(modules, terms)}


def carry_loss_state(modules, terms, prev: Dict[str, dict]) -> None:
    """A loss of the previous stage with the same label and the same state (names, shapes)
    continues from it (a learned classifier or margin, a negatives bank); others start fresh."""
    for module, term in zip(modules, terms):
        state, own = prev.get(term.label), module.state_dict()
        if state and state.keys() == own.keys() and all(v.shape == own[k].shape for k, v in state.items()):
            module.load_state_dict(state)

"""StageState: everything of one stage that a checkpoint holds, loaded back whole on resume.

The position is counted in optimizer steps; a checkpoint always sits on a step boundary
(``batch`` = micro-batches of the epoch already consumed), so resuming replays nothing and
skips nothing.
"""

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn

from .optim import Schedule


@dataclass
class StageState:
    index: int                                   # the stage's number in the recipe
    name: str
    model: nn.Module                             # unwrapped (no DDP, no compile)
    losses: nn.ModuleList
    optimizers: Dict[str, torch.optim.Optimizer]
    schedule: Schedule
    scaler: Optional[torch.amp.GradScaler] = None
    epoch: int = 0
    batch: int = 0                               # micro-batches of `epoch` already consumed
    step: int = 0                                # optimizer steps of this stage

    def state_dict(self) -> dict:
        return {"stage": self.index, "stage_name": self.name, "epoch": self.epoch, "batch": self.batch,
                "step": self.step, "model": self.model.state_dict(), "losses": self.losses.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        """Raises ValueError/KeyError/RuntimeError naming what does not fit."""
        if sorted(state["optimizers"]) != sorted(self.optimizers):
            raise ValueError(f"optimizers {sorted(state['optimizers'])} in the checkpoint, "
                             f"{sorted(self.optimizers)} in this run")
        self.model.load_state_dict(state["model"])
        self.losses.load_state_dict(state["losses"])
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])

"""Optimizers fed with an estimated gradient: any torch optimizer works with any estimator.

Parameters are stacked over seeds, and SGD and Adam act elementwise, so one optimizer over the
stacked tensors updates every seed exactly as its own optimizer would. Seeds that have stopped are
held still by restoring their values after the step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fgray.config import TrainConfig
from fgray.models import Params, per_seed


def build_optimizer(config: TrainConfig, params: Params) -> torch.optim.Optimizer:
    tensors = list(params.values())
    if config.optimizer == "adam":
        return torch.optim.Adam(tensors, lr=config.lr)
    return torch.optim.SGD(tensors, lr=config.lr, momentum=config.momentum)


@torch.no_grad()
def update(optimizer: torch.optim.Optimizer, params: Params, grads: Params) -> None:
    """One optimizer step of every seed with `grads` (the part `compile: true` compiles)."""
    for k, p in params.items():
        p.grad = grads[k]
    optimizer.step()
    for p in params.values():
        p.grad = None


@torch.no_grad()
def masked_step(
    optimizer: torch.optim.Optimizer,
    params: Params,
    grads: Params,
    active: np.ndarray,
    step: Callable[[torch.optim.Optimizer, Params, Params], None] = update,
) -> None:
    """One optimizer step (`step`: `update` or its compiled form) that changes only the seeds
    where `active` is True."""
    frozen = None
    if not active.all():
        frozen = {k: p.clone() for k, p in params.items()}
    step(optimizer, params, grads)
    if frozen is not None:
        mask = torch.as_tensor(active, device=next(iter(params.values())).device)
        for k, p in params.items():
            p.copy_(torch.where(per_seed(mask, p), p, frozen[k]))

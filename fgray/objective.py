"""What is minimised: a model evaluated functionally on its data, giving one loss per seed.

The estimators see a `Loss`: `loss(params) -> (S,)`, and per-example losses for those that need
them; this module is where data meets model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fgray.data import Dataset
from fgray.models import Params, TestFunction


class _CrossEntropyClassFirst(torch.autograd.Function):
    """Cross entropy of class-first logits z (C, ..., N) against labels (1, ..., N): per example
    (..., N), or its mean over the examples (...,) when `mean` (fused: one op fewer per pass).

    Its jvp and vjp are written out from p = softmax(z): d(loss_n) = Σ_c p·t - t[y] and
    ∇z = (p - onehot(y)) · grad_n (grad / N for the mean). torch's own forward-AD rule for
    log_softmax runs through a slow decomposition and materialises the full log-softmax tangent;
    this is ~2x faster at S=256. Written in the setup_context style so torch.func transforms
    (jvp, vmap) work through it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor, labels: Tensor, mean: bool) -> tuple[Tensor, Tensor]:
        logp = torch.log_softmax(z, 0)
        loss = 0.0 - logp.gather(0, labels).squeeze(0)  # 0 - x: a perfect fit is 0
        return loss.mean(-1) if mean else loss, logp.exp()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, bool], output: tuple) -> None:
        _, labels, ctx.mean = inputs
        _, p = output
        ctx.mark_non_differentiable(p)
        ctx.save_for_backward(p, labels)
        ctx.save_for_forward(p, labels)

    @staticmethod
    def jvp(ctx: Any, tangent: Tensor, *_: Any) -> tuple[Tensor, None]:
        p, labels = ctx.saved_tensors
        d_loss = (p * tangent).sum(0) - tangent.gather(0, labels).squeeze(0)
        return d_loss.mean(-1) if ctx.mean else d_loss, None

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Any) -> tuple[Tensor, None, None]:
        p, labels = ctx.saved_tensors
        grad_z = p.scatter_add(0, labels, torch.full_like(labels, -1, dtype=p.dtype))
        if ctx.mean:
            return grad_z * (grad.unsqueeze(0).unsqueeze(-1) / p.shape[-1]), None, None
        return grad_z * grad.unsqueeze(0), None, None


def _class_first(logits: Tensor, labels: Tensor, mean: bool) -> Tensor:
    # Computed with the class axis first: over a last axis of 3 classes torch's log-softmax
    # kernel is 8x slower at 256 seeds.
    labels = labels.expand(logits.shape[:-1]).unsqueeze(0)
    if torch.compiler.is_compiling():
        # Dynamo cannot trace a Function with a custom jvp, and Inductor fuses the plain
        # formula anyway (the custom rules only matter eager); same value, same gradient.
        loss = 0.0 - torch.log_softmax(logits.movedim(-1, 0), 0).gather(0, labels).squeeze(0)
        return loss.mean(-1) if mean else loss
    loss, _ = _CrossEntropyClassFirst.apply(logits.movedim(-1, 0), labels, mean)
    return loss


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross entropy over the example axis, through log-softmax (never softmax-then-log).

    logits (..., N, C); labels (N,) or (..., N). Returns (...,).
    """
    return _class_first(logits, labels, mean=True)


def per_example_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """The cross entropy of every example: logits (..., N, C) -> (..., N)."""
    return _class_first(logits, labels, mean=False)


class Objective:
    """Loss and test metrics of a population of one model (parameters with a leading seed axis)."""

    def __init__(self, model: nn.Module, data: Dataset | None) -> None:
        self.model = model
        self.data = data
        self.is_test_function = isinstance(model, TestFunction)

    @property
    def n_train(self) -> int:
        return 0 if self.data is None else len(self.data.y_train)

    def loss(self, params: Params, batch: Tensor | None = None) -> Tensor:
        """Per-seed training loss: full training set, or the per-seed example indices (S, B)."""
        if self.data is None:
            return functional_call(self.model, params, ())
        x, y = self._batch(batch)
        return cross_entropy(functional_call(self.model, params, (x,)), y)

    def per_example_loss(self, params: Params, batch: Tensor | None = None) -> Tensor:
        """(S, N) losses of the examples that `loss` averages (models trained on data only)."""
        if self.data is None:
            raise ValueError(f"{type(self.model).__name__} is a test function: it has no examples")
        x, y = self._batch(batch)
        return per_example_cross_entropy(functional_call(self.model, params, (x,)), y)

    def _batch(self, batch: Tensor | None) -> tuple[Tensor, Tensor]:
        assert self.data is not None
        x, y = self.data.x_train, self.data.y_train
        return (x, y) if batch is None else (x[batch], y[batch])

    def on(self, batch: Tensor | None = None) -> Loss:
        """The loss an estimator differentiates: the full training set, or a mini-batch."""
        return Loss(self, batch)

    @torch.no_grad()
    def evaluate(self, params: Params) -> dict[str, Tensor]:
        """Per-seed test metrics; test functions report their value as the test loss."""
        if self.data is None:
            value = functional_call(self.model, params, ())
            return {"test_loss": value}
        logits = functional_call(self.model, params, (self.data.x_test,))
        y = self.data.y_test
        errors = (logits.argmax(-1) != y).sum(-1)
        return {
            "test_loss": cross_entropy(logits, y),
            "test_accuracy": 1.0 - errors.double() / len(y),
            "test_errors": errors,
        }


@dataclass(frozen=True)
class Loss:
    """`loss(params)` -> (S,) per-seed mean loss, which is all most estimators need; estimators
    that work per example (activity perturbation) also call `per_example(params)` -> (S, N)."""

    objective: Objective
    batch: Tensor | None = None

    def __call__(self, params: Params) -> Tensor:
        return self.objective.loss(params, self.batch)

    def per_example(self, params: Params) -> Tensor:
        return self.objective.per_example_loss(params, self.batch)

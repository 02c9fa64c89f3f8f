"""Claims about the loss, checked without trusting fgray's own autograd rules.

fgray's cross entropy is a custom autograd.Function with a hand-written jvp (forward mode, what
the forward gradient uses) and backward (what backprop uses). Checking backprop against autograd
through that same backward proves nothing, so here both rules are checked against finite
differences (`torch.autograd.gradcheck`, backward and forward mode, float64) and the values and
gradients against `torch.nn.functional.cross_entropy`:

- its value, gradient and directional derivative are torch's cross entropy's, for one model and
  for a population (labels shared or per seed);
- gradcheck passes in both modes.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from fgray.objective import cross_entropy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def logits_and_labels(shape: tuple[int, ...], classes: int, per_seed_labels: bool, seed: int = 0):
    """Random float64 logits (..., N, C), wide enough to exercise the softmax, and labels (N,)
    or (..., N)."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(*shape, classes, generator=g, dtype=torch.float64)
    label_shape = shape if per_seed_labels else shape[-1:]
    labels = torch.randint(0, classes, label_shape, generator=g)
    return logits, labels


def torch_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The reference: torch's own mean cross entropy, per leading index."""
    labels = labels.expand(logits.shape[:-1])
    flat_logits = logits.reshape(-1, logits.shape[-2], logits.shape[-1])
    flat_labels = labels.reshape(-1, labels.shape[-1])
    losses = [F.cross_entropy(z, y) for z, y in zip(flat_logits, flat_labels, strict=True)]
    return torch.stack(losses).reshape(logits.shape[:-2])


SHAPES = {
    "one-model": ((7,), 3, False),
    "population-shared-labels": ((4, 9), 3, False),
    "population-own-labels": ((4, 9), 10, True),
}


@pytest.mark.parametrize("case", SHAPES)
def test_value_and_gradient_are_torch_cross_entropys(case):
    shape, classes, per_seed = SHAPES[case]
    logits, labels = logits_and_labels(shape, classes, per_seed)
    mine = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    weights = torch.randn(
        shape[:-1], generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )

    value = cross_entropy(mine, labels)
    expected = torch_cross_entropy(theirs, labels)
    (grad,) = torch.autograd.grad((weights * value).sum(), mine)
    (expected_grad,) = torch.autograd.grad((weights * expected).sum(), theirs)

    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", SHAPES)
def test_directional_derivative_is_torch_cross_entropys(case):
    shape, classes, per_seed = SHAPES[case]
    logits, labels = logits_and_labels(shape, classes, per_seed)
    tangent = torch.randn(
        logits.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )

    with fwAD.dual_level():
        _, jvp = fwAD.unpack_dual(cross_entropy(fwAD.make_dual(logits, tangent), labels))
    with fwAD.dual_level():
        _, expected = fwAD.unpack_dual(torch_cross_entropy(fwAD.make_dual(logits, tangent), labels))

    torch.testing.assert_close(jvp, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", SHAPES)
def test_gradcheck_backward_and_forward_mode_against_finite_differences(case):
    shape, classes, per_seed = SHAPES[case]
    logits, labels = logits_and_labels(shape, classes, per_seed)
    logits.requires_grad_()

    # gradcheck compares both hand-written rules with central differences (eps 1e-6, float64):
    # the error is O(eps²) ~ 1e-12 times the third derivative, far inside its atol 1e-5.
    assert torch.autograd.gradcheck(
        lambda z: cross_entropy(z, labels), (logits,), check_forward_ad=True
    )

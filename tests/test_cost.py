"""Step cost: peak memory against hand counts, FLOPs against hand counts, and backprop-checkpoint
gives backprop's gradient while keeping less memory between its forward and backward pass."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.func import functional_call

from fgray import cost
from fgray.config import TrainConfig
from fgray.estimators import backprop, forward, forward_per_tensor
from fgray.loop import PopulationTrainer
from fgray.models import MLP, checkpoint_blocks, conv3x3


def _generators(s: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(i) for i in range(s)]


def test_cpu_peak_memory_matches_a_hand_count() -> None:
    # loss = exp(w).sum(1) for w (S, n) float32, then d loss / d w. Live at the peak, in bytes:
    # exp's output, kept for its backward (4 S n); the scalar total and the ones_like seed of the
    # backward (4 + 4); exp's backward grad * result (4 S n). The (S,) row sums (4 S) were a
    # temporary already freed (sum's backward keeps only shapes); detach and requires_grad_ make no
    # copy, the sums' backward expands (views).
    s, n = 8, 100_000
    w = torch.randn(s, n)

    def step() -> None:
        leaf = w.detach().requires_grad_()
        torch.autograd.grad(leaf.exp().sum(1).sum(), [leaf])

    peak, method = cost.peak_memory(step, torch.device("cpu"))
    assert peak == 4 * s * n + 4 + 4 + 4 * s * n
    assert method == cost.CPU_METHOD


def test_flops_of_logistic_regression_match_hand_counts() -> None:
    # One dense layer on data: f = 2 N in out per seed and forward pass. Backprop adds the weight
    # gradient x^T g (f; no input gradient, data needs none): 2f. Forward gradient: primal, x dW
    # and torch's materialised 0 W for the data's missing tangent (see fgray.cost): 3f.
    # Per tensor: that pass for W (3f) and one for b, where no product has a tangent (f): 4f.
    trainer = PopulationTrainer(TrainConfig(model="logreg", method="backprop"), [0, 1, 2])
    n, s = trainer.objective.n_train, 3
    f = 2 * n * 4 * 3 * s
    loss, params = trainer.objective.on(), trainer.params
    expected = {backprop(): 2 * f, forward(): 3 * f, forward_per_tensor(): 4 * f}
    for estimator, flops in expected.items():
        assert cost.count_flops(lambda e=estimator: e(loss, params, _generators(s))) == flops
    assert cost.count_flops(lambda: loss(params)) == f
    step = trainer.step_cost()
    assert step.flops_per_seed == 2 * f / s and step.forward_equivalents == 2.0


def test_flops_of_one_mlp_dense_layer_match_hand_counts() -> None:
    # The MLP's first layer alone (4 -> 64, batched over S seeds): the same counts as above.
    s, n = 3, 7
    x = torch.randn(n, 4)
    layer = MLP(sizes=(4, 64))
    params = layer.init({k: p.shape for k, p in layer.named_parameters()}, torch.Generator())
    params = {k: torch.stack([v] * s) for k, v in params.items()}

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(layer, p, (x,)).square().mean((-1, -2))

    f = 2 * n * 4 * 64 * s
    assert cost.count_flops(lambda: loss(params)) == f
    assert cost.count_flops(lambda: backprop()(loss, params, _generators(s))) == 2 * f
    assert cost.count_flops(lambda: forward()(loss, params, _generators(s))) == 3 * f
    assert cost.count_flops(lambda: forward_per_tensor()(loss, params, _generators(s))) == 4 * f


def test_flops_of_a_grouped_convolution_match_hand_counts_whatever_the_population() -> None:
    # The CNN's second convolution (2 -> 4 channels, 3x3, 'same' on 28x28) on N inputs, one group
    # per seed: f = 2 N 28 28 4 2 9 per seed. Backprop adds the weight gradient (f; the data
    # input needs none): 2f per seed for S = 1 and S = 3 alike (torch's own formula counts the
    # weight gradient S times over; see fgray.cost). Forward gradient: 3f, as for a dense layer.
    n = 5
    x = torch.randn(n, 2, 28, 28)
    f = 2 * n * 28 * 28 * 4 * 2 * 9
    for s in (1, 3):
        params = {"w": torch.randn(s, 4, 2, 3, 3), "b": torch.randn(s, 4)}

        def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return conv3x3(x, p["w"], p["b"]).square().mean((1, 2, 3, 4))

        assert cost.count_flops(lambda p=params: loss(p)) == f * s
        assert (
            cost.count_flops(lambda p=params, s=s: backprop()(loss, p, _generators(s))) == 2 * f * s
        )
        assert (
            cost.count_flops(lambda p=params, s=s: forward()(loss, p, _generators(s))) == 3 * f * s
        )


def test_backprop_checkpoint_gives_backprop_gradient_with_less_memory_held_on_the_cnn() -> None:
    config = TrainConfig(model="cnn", method="backprop-checkpoint", train_size=48, test_size=8)
    trainer = PopulationTrainer(config, [0, 1])
    loss, params = trainer.objective.on(), trainer.params
    value, grads = trainer.estimate(loss, params, _generators(2))
    ref_value, ref_grads = backprop()(loss, params, _generators(2))
    # Recomputation repeats the same float32 kernels on the same inputs: equal up to rounding.
    torch.testing.assert_close(value, ref_value)
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-5, atol=1e-6)

    def graph(checkpoint: bool) -> object:
        """The forward pass with its autograd graph, which the caller keeps alive."""
        leaves = {k: p.detach().requires_grad_() for k, p in params.items()}
        with torch.enable_grad(), checkpoint_blocks() if checkpoint else nullcontext():
            return loss(leaves)

    # Between forward and backward plain backprop keeps every block's activations (the conv
    # layers' outputs, pooling indices), checkpointing only each block's input: less than half.
    _, held_plain = cost.cpu_memory(lambda: graph(False))
    _, held_checkpoint = cost.cpu_memory(lambda: graph(True))
    assert held_checkpoint < held_plain / 2
    # Not a lower peak for the whole step: see the next test.


def test_cpu_peak_site_names_the_allocation_and_op_that_set_the_peak() -> None:
    def step() -> tuple[torch.Tensor, torch.Tensor]:
        small = torch.ones(250_000)  # 1 MB
        big = torch.zeros(1_000_000)  # 4 MB: with `small`, the peak (5 MB)
        del big
        return small, torch.full((500_000,), 2.0)  # 2 MB: 3 MB live, below the peak

    site = cost.cpu_peak_site(step)
    assert site.peak_bytes == 5_000_000
    assert site.allocation_bytes == 4_000_000
    assert "aten::zeros" in site.ops and "aten::full" not in site.ops


def test_on_the_cnn_backprop_and_backprop_checkpoint_peak_at_the_same_allocation() -> None:
    # Why checkpointing does not lower the CNN's peak (README "Memory"): the step peaks in the
    # backward of conv2, the largest block, whose activations checkpointing recomputes in full;
    # the blocks' inputs and outputs it keeps are all that plain backprop keeps across blocks too.
    sites = {}
    for method in ("backprop", "backprop-checkpoint"):
        trainer = PopulationTrainer(TrainConfig(model="cnn", method=method), [0])
        sites[method] = trainer.peak_site()
        assert sites[method].peak_bytes == trainer.step_cost().peak_bytes
    plain, checkpointed = sites["backprop"], sites["backprop-checkpoint"]
    assert plain.ops[0] == checkpointed.ops[0] == "aten::convolution_backward"
    assert plain.input_shapes == checkpointed.input_shapes
    assert (4, 2, 3, 3) in plain.input_shapes  # conv2's weight: its backward, not conv1's
    assert plain.allocation_bytes == checkpointed.allocation_bytes
    # checkpoint's bookkeeping adds a few kB; nothing it saves brings the peak down
    assert 0 <= checkpointed.peak_bytes - plain.peak_bytes < 0.001 * plain.peak_bytes

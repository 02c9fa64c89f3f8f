"""What one training step costs: peak memory and FLOPs, measured once per trial, not timed; and
where its memory peaks.

Memory is the peak of the bytes the step allocates above what was live when it began (its
activations, saved tensors, tangents, gradients and optimizer temporaries; not the parameters and
data that exist anyway):
- on CUDA from the caching allocator's statistics (`max_memory_allocated` after
  `reset_peak_memory_stats`, minus `memory_allocated` before the step);
- on CPU from the torch profiler's allocation events (`profile_memory=True`): every allocation and
  free the CPU allocator reports, in time order, summed; the peak of that running sum. It counts
  tensor storage only (no Python objects, no allocator slack), exactly what CUDA's statistic counts.

Activation checkpointing (backprop-checkpoint) lowers what a step holds between its forward and
backward pass, but not necessarily its peak: on the replication report's CNN the peak is the
backward of its largest block (conv2 with its ReLU and pooling), which is recomputed in full, so
both peaks agree to within a few kB (`cpu_peak_site`: the same allocation in both). A dense
layer with its ReLU saves only its input and output, the tensors per-layer checkpointing keeps, so
it does not lower an MLP's peak at any depth either (checkpoint segments spanning several
layers could; fgray has none).

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`, which counts matrix products and
convolutions (2 per multiply-add) and no elementwise ops. Forward-mode AD's tangent products run as
ordinary aten ops, so the counter sees them, and no analytic correction is needed. One finding: for
a product whose input has no tangent (a layer's data input), torch's jvp of mm forms the zero
tangent as an `_efficientzerotensor`, whose fallback materialises it (zeros, expanded) and runs a
real matmul on it, so a dense layer on data costs 3 products under forward AD (primal, x·dW,
0·W), not 2; the counter reports that work because it is done. One correction: torch's formula
for convolution_backward ignores `groups` in the weight-gradient term (its source says it skips
them), counting every input channel against every output channel: for the population's grouped
convolutions (one group per seed) that is S times too many. `_conv_backward_flop` divides that
term by the groups. tests/test_cost.py checks the counts against hand counts.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from fgray.models import Params

CUDA_METHOD = "cuda allocator peak (max_memory_allocated above memory_allocated before the step)"
CPU_METHOD = "torch profiler allocation events (running sum of CPU allocations and frees, peak)"
FLOP_METHOD = "FlopCounterMode (matmuls and convolutions only)"


@dataclass(frozen=True)
class StepCost:
    """Peak memory and compute of one training step of a population of `population` seeds."""

    population: int
    peak_bytes: int
    flops: int  # matmul and convolution FLOPs of the step, whole population
    forward_flops: int  # the same count for one plain forward pass of the loss
    memory_method: str

    @property
    def peak_bytes_per_seed(self) -> float:
        return self.peak_bytes / self.population

    @property
    def flops_per_seed(self) -> float:
        return self.flops / self.population

    @property
    def forward_equivalents(self) -> float:
        """Step FLOPs in forward passes (NaN where a forward pass has no counted FLOPs)."""
        return self.flops / self.forward_flops if self.forward_flops else math.nan

    def columns(self) -> dict[str, Any]:
        """The values a results row records."""
        return {
            "step_peak_bytes": self.peak_bytes,
            "step_peak_bytes_per_seed": self.peak_bytes_per_seed,
            "step_flops_per_seed": self.flops_per_seed,
            "step_forward_equivalents": self.forward_equivalents,
            "step_memory_method": self.memory_method,
        }


def _conv_backward_flop(
    grad_out_shape: Any,
    x_shape: Any,
    w_shape: Any,
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    groups: int,
    output_mask: Any,
    out_shape: Any,
    **kwargs: Any,
) -> int:
    """torch's convolution_backward count with the weight-gradient term divided by `groups`."""

    def t(shape: Any) -> list[int]:
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:  # grad_input: a transposed convolution with the (per-group) weight
        flops += conv_flop_count(
            list(grad_out_shape), list(w_shape), list(out_shape[0]), not transposed
        )
    if output_mask[1]:  # grad_weight: inputs against output gradients, within each group only
        inputs, grads = (grad_out_shape, x_shape) if transposed else (x_shape, grad_out_shape)
        flops += conv_flop_count(t(inputs), t(grads), t(out_shape[1])) // groups
    return flops


def count_flops(fn: Callable[[], Any]) -> int:
    """Matmul and convolution FLOPs of running `fn()` (see the module docstring)."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def _cpu_allocations(prof: profile) -> list[tuple[int, int, Any]]:
    """(time, bytes, event) of each CPU allocation (positive) and free (negative), in time order."""
    from torch._C._profiler import _EventType

    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and str(event.extra_fields.device) == "cpu":
            events.append((event.start_time_ns, int(event.extra_fields.alloc_size), event))
    return sorted(events, key=lambda e: (e[0], e[1]))  # at equal times, frees first


def _profiled(fn: Callable[[], Any], record_shapes: bool = False) -> tuple[profile, Any]:
    # No garbage collection inside the window: freeing older objects there would hide bytes.
    gc.disable()
    try:
        with profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=record_shapes
        ) as prof:
            result = fn()
    finally:
        gc.enable()
    return prof, result


@dataclass(frozen=True)
class PeakSite:
    """Where a step reached its peak: the allocation that set it and the ops it happened in, so
    a claim about what dominates a step's memory is a measurement, not a reading."""

    peak_bytes: int
    allocation_bytes: int  # the allocation that set the peak
    ops: tuple[str, ...]  # the ops around it, innermost first
    input_shapes: tuple[tuple[int, ...], ...]  # tensor inputs of the innermost op that has any

    def __str__(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.input_shapes)
        return f"{self.allocation_bytes:,} B in {' < '.join(self.ops[:2])} ({shapes})"


def _running_peak(prof: profile) -> tuple[int, int, Any]:
    """(peak, bytes live at the end, the allocation event that set the peak) of the profiled
    CPU allocations and frees, summed in time order."""
    live = peak = 0
    at = None
    for _, size, event in _cpu_allocations(prof):
        live += size
        if live > peak:
            peak, at = live, event
    return peak, live, at


def cpu_peak_site(fn: Callable[[], Any]) -> PeakSite:
    """Where `fn()`'s CPU allocations, summed in time order, reached their peak."""
    prof, result = _profiled(fn, record_shapes=True)
    peak, _, at = _running_peak(prof)
    del result
    ops, shapes = [], ()
    op = at.parent if at is not None else None
    while op is not None:
        ops.append(op.name)
        inputs = getattr(op.extra_fields, "inputs", None) or []
        if not shapes:
            shapes = tuple(tuple(i.sizes) for i in inputs if hasattr(i, "sizes"))
        op = op.parent
    size = int(at.extra_fields.alloc_size) if at is not None else 0
    return PeakSite(peak, size, tuple(ops), shapes)


def cpu_memory(fn: Callable[[], Any]) -> tuple[int, int]:
    """(peak bytes, bytes still held with fn's result alive) that `fn()` allocated on the CPU
    above what was live before it, from the profiler's allocation events."""
    prof, result = _profiled(fn)
    peak, live, _ = _running_peak(prof)
    del result
    return peak, live


def peak_memory(fn: Callable[[], Any], device: torch.device) -> tuple[int, str]:
    """(peak bytes `fn()` held above what was live before it, how it was measured)."""
    if device.type != "cuda":
        return cpu_memory(fn)[0], CPU_METHOD
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before), CUDA_METHOD


def measure(
    step: Callable[[], Any], forward: Callable[[], Any], population: int, device: torch.device
) -> StepCost:
    """The cost of `step()` (one training step) against `forward()` (one forward pass of the loss).

    Each is run once for memory and once more under the FLOP counter: call on scratch copies.
    """
    peak, method = peak_memory(step, device)
    with torch.no_grad():
        forward_flops = count_flops(forward)
    return StepCost(population, peak, count_flops(step), forward_flops, method)


def scratch_generators(n: int, device: torch.device) -> Sequence[torch.Generator]:
    """Fresh generators for a measurement, so the trial's own random streams are untouched."""
    return [torch.Generator(device).manual_seed(0) for _ in range(n)]


def scratch_params(params: Params) -> Params:
    return {k: p.detach().clone() for k, p in params.items()}

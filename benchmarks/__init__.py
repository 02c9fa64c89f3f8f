"""fgray's benchmark suite: `python -m benchmarks.run --write BENCHMARKS.md` (`make bench`).

Sections, each a module with `measure(settings) -> dict` and `render(result) -> str`:

- step        per-iteration cost of every gradient estimator, S=1, at 1 thread and all threads
- population  seed-iterations per second of PopulationTrainer.step() for S = 1, 16, 256
- sweep       the quickstart sweep through the real `fgray sweep` path (and 10,000 seeds: --big)
- stability   run-to-run spread of the CNN backprop step, with and without glibc malloc settings

The target table (`targets`) is computed from whichever sections ran. Nothing is asserted: the
numbers are ratios from one run on one machine, written down for people to compare.
`python -m benchmarks.profile_step MODEL METHOD` prints torch.profiler's table for one estimator.
"""

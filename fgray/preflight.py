"""What a sweep is checked for before Ray starts: things that make every trial fail the same way.

A spec can be valid on its own and still never run here: a batch larger than the data, MNIST not
on this disk, more CPUs or GPUs per trial than this machine has. Launched, each such trial would
fail on a worker and be retried `max_failures` times, seconds to minutes later; checked here, the
user gets one line naming the key in a second. Data files and machine resources are only knowable
for a local Ray (the driver's disk and cores are the trials'); on a cluster, sizes are still
checked and the rest is left to the trials, which record such an error without retrying it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from fgray.config import TrainConfig
from fgray.spec import SpecError


def is_local(address: str | None) -> bool:
    """Whether the sweep will start its own Ray on this machine: no cluster to join, and no Ray
    this process already joined (a notebook's ray.init(address=...) is some cluster)."""
    ray = sys.modules.get("ray")
    joined = ray is not None and ray.is_initialized()
    return not address and not os.environ.get("RAY_ADDRESS") and not joined


def check_trials(configs: Iterable[tuple[str, TrainConfig]], source: str, local: bool) -> None:
    """Every distinct trial config's data is there and large enough for its batch; raises a
    SpecError naming `source`, the key and the group."""
    from fgray.data import DataError, check_available

    seen: set[TrainConfig] = set()
    for group, config in configs:
        if config in seen:
            continue
        seen.add(config)
        where = "" if group == "all" else f" (group {group})"
        try:
            n_train = check_available(config, files=local)
        except DataError as exc:
            key = (
                "train_size"
                if "train_size" in str(exc)
                else "data_root"
                if config.data_root
                else "data"
            )
            raise SpecError(source, key, f"{exc}{where}") from None
        if n_train is not None and config.batch_size is not None and config.batch_size > n_train:
            raise SpecError(
                source,
                "batch_size",
                f"{config.batch_size} is larger than the {n_train} training examples of "
                f"{config.resolved_data}{where}; lower batch_size (or leave it out for full "
                "batch)" + (" or raise train_size" if config.model == "cnn" else ""),
            )


def check_resources(
    resources: dict[str, float], num_cpus: int | None, source: str, local: bool
) -> None:
    """A local Ray has this machine's CPUs (or --num-cpus) and GPUs; a trial asking for more
    would wait forever. Refused before Ray starts (on a cluster, after connecting)."""
    if not local:
        return
    cpus = num_cpus or os.cpu_count() or 1
    if resources.get("cpu", 1) > cpus:
        given = f" (--num-cpus {num_cpus})" if num_cpus else ""
        raise SpecError(
            source,
            "resources.cpu",
            f"each trial asks for {resources['cpu']:g} CPUs but a local Ray here has {cpus}"
            f"{given}; lower resources.cpu" + ("" if num_cpus else " or join a cluster"),
        )
    gpu = resources.get("gpu", 0)
    if gpu > 0:
        gpus = local_gpus()
        if gpu > gpus:
            raise SpecError(
                source,
                "resources.gpu",
                f"each trial asks for {gpu:g} GPU but this machine has {gpus}; set "
                "resources.gpu: 0 or join a cluster with GPU nodes (--address)",
            )


def local_gpus() -> int:
    """GPUs torch sees here (what a local Ray gives trials: both honour CUDA_VISIBLE_DEVICES)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0

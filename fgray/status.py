"""`fgray status`: where an experiment stands, from its files alone (no Ray needed).

A plan (one trial's config and seeds) is *done* when its results are complete and readable,
*errored* when its rows record an error, *in progress* when the sweep's last Tune run holds a
checkpoint for it (that is the run `fgray resume` restores), and *pending* otherwise. The
experiment is *running* while its driver lives, *finished* when every plan has its rows (results,
or the error that stopped it) and *interrupted* otherwise. The report says, per group, how many
seeds are in each state and what `fgray resume` would do with them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from fgray import results
from fgray.sweep import LOCK, Manifest, lock_holder_alive

STATES = ("done", "in progress", "pending", "errored")


@dataclass
class Status:
    experiment_uri: str
    state: str  # running | interrupted | finished
    seeds: dict[str, dict[str, int]]  # group -> state -> seeds
    plans: dict[str, list[str]] = field(default_factory=dict)  # state -> plan names
    damaged: dict[str, str] = field(default_factory=dict)  # part -> reason
    holder: str = ""

    def render(self) -> str:
        lines = [f"experiment: {self.experiment_uri}", f"state: {self.state}{self.holder}"]
        width = max([len(g) for g in self.seeds] + [5])
        lines.append(f"{'group':<{width}}  " + "  ".join(f"{s:>11}" for s in STATES))
        totals = dict.fromkeys(STATES, 0)
        for group, counts in self.seeds.items():
            lines.append(f"{group:<{width}}  " + "  ".join(f"{counts[s]:>11}" for s in STATES))
            for s in STATES:
                totals[s] += counts[s]
        lines.append(f"{'all':<{width}}  " + "  ".join(f"{totals[s]:>11}" for s in STATES))
        for part, why in self.damaged.items():
            lines.append(f"damaged: {part} ({why})")
        lines.append(self.resume_plan())
        return "\n".join(lines)

    def resume_plan(self) -> str:
        n = {s: len(self.plans.get(s, [])) for s in STATES}
        if self.state == "running":
            lock = results.locate(self.experiment_uri).join(LOCK).uri
            return (
                "resume: not now; a driver is running this experiment (if that driver is gone, "
                f"e.g. its machine was replaced, delete {lock} first)"
            )
        if not (n["in progress"] or n["pending"] or n["errored"] or self.damaged):
            return "resume: nothing to do; every seed has its result"
        return (
            f"resume: `fgray resume {self.experiment_uri}` would keep {n['done']} finished "
            f"trials, continue {n['in progress']} from their checkpoints, retry "
            f"{n['errored']} errored, re-run {len(self.damaged)} damaged part(s) and start "
            f"{n['pending']} pending"
        )


def _checkpointed(manifest: Manifest) -> set[str]:
    """Plans with a checkpoint in the sweep's last Tune run: the one `fgray resume` restores
    (earlier runs ended before it started; their unfinished plans are re-run from scratch)."""
    run = results.locate(manifest.run_uri(manifest.last_run))
    names: set[str] = set()
    for info in run.fs.get_file_info(pafs.FileSelector(run.path, allow_not_found=True)):
        if info.type != pafs.FileType.Directory:
            continue
        inside = run.fs.get_file_info(pafs.FileSelector(info.path))
        if any(i.base_name.startswith("checkpoint_") for i in inside):
            names.add(info.base_name)
    return names


def _driver(experiment_uri: str) -> dict:
    lock = results.locate(experiment_uri).join(LOCK)
    try:
        with lock.fs.open_input_stream(lock.path) as stream:
            return json.loads(stream.read())
    except (FileNotFoundError, ValueError):
        return {}


def experiment_status(experiment_uri: str) -> Status:
    manifest = Manifest.load(experiment_uri)
    scan = results.scan(experiment_uri)
    checkpointed = _checkpointed(manifest)
    damaged_names = {p.rsplit("/", 1)[-1][: -len(".parquet")] for p in scan.corrupt}
    seeds: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATES, 0))
    plans: dict[str, list[str]] = defaultdict(list)
    for plan in manifest.plans:
        name = plan["name"]
        if name in scan.errored:
            state = "errored"
        elif name in scan.complete and name not in damaged_names:
            state = "done"
        elif name in checkpointed:
            state = "in progress"
        else:
            state = "pending"
        seeds[plan["group"]][state] += len(plan["seeds"])
        plans[state].append(name)
    holder = _driver(experiment_uri)
    if lock_holder_alive(holder):
        state, who = "running", f" (driver pid {holder.get('pid')} on {holder.get('host')})"
    elif not plans["in progress"] and not plans["pending"]:
        state, who = "finished", ""  # every plan has its rows (results or errors)
    else:
        state, who = "interrupted", ""
    return Status(experiment_uri, state, dict(seeds), dict(plans), scan.corrupt, who)

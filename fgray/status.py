"""`fgray status`: where an experiment stands, from its files alone (no Ray, no torch).

Each planned trial is *done*, *errored*, *in progress* or *pending*, named by what `fgray resume`
does with it; the decision is `fgray.experiment.survey`, the one resume acts on, so the report
always predicts it. The experiment is *running* while its driver lives, *finished* when every
trial has its rows (results, or the error that stopped it) and *interrupted* otherwise. The report
says, per group, how many seeds are in each state, names the damaged result parts and says what
`fgray resume` would do.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from fgray import experiment, results
from fgray.experiment import Manifest, TrialState

STATES = tuple(TrialState)  # done, in progress, pending, errored


@dataclass
class Status:
    experiment_uri: str
    state: str  # running | interrupted | finished
    seeds: dict[str, dict[TrialState, int]]  # group -> state -> seeds
    plans: dict[TrialState, list[str]] = field(default_factory=dict)  # state -> plan names
    damaged: dict[str, str] = field(default_factory=dict)  # part -> reason
    holder: str = ""
    phase: str = ""  # a tuned sweep's phase, and what its picks say

    def render(self) -> str:
        lines = [f"experiment: {self.experiment_uri}", f"state: {self.state}{self.holder}"]
        if self.phase:
            lines.append(f"phase: {self.phase}")
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
            return (
                "resume: not now; a driver is running this experiment (if that driver is gone, "
                f"e.g. its machine was replaced, delete {experiment.lock_uri(self.experiment_uri)}"
                " first)"
            )
        left = n[TrialState.IN_PROGRESS] + n[TrialState.PENDING] + n[TrialState.ERRORED]
        if not (left or self.damaged):
            return "resume: nothing to do; every seed has its result"
        return (
            f"resume: `fgray resume {self.experiment_uri}` would keep {n[TrialState.DONE]} "
            f"finished trials, continue {n[TrialState.IN_PROGRESS]} from their checkpoints, "
            f"retry {n[TrialState.ERRORED]} errored, re-run {len(self.damaged)} damaged part(s) "
            f"and start {n[TrialState.PENDING]} pending"
        )


def experiment_status(experiment_uri: str) -> Status:
    manifest = Manifest.load(experiment_uri)
    survey = experiment.survey(manifest, results.scan(experiment_uri, manifest.seeds()))
    seeds: dict[str, dict[TrialState, int]] = defaultdict(lambda: dict.fromkeys(STATES, 0))
    plans: dict[TrialState, list[str]] = defaultdict(list)
    for plan in manifest.plans:
        state = survey.states[plan.name]
        group = f"{plan.group} [{plan.phase}]" if plan.phase else plan.group
        seeds[group][state] += len(plan.seeds)
        plans[state].append(plan.name)
    holder = experiment.read_holder(experiment_uri)
    if experiment.holder_alive(holder):
        state, who = "running", f" (driver {experiment.describe_holder(holder)})"
    elif not plans[TrialState.IN_PROGRESS] and not plans[TrialState.PENDING]:
        state, who = "finished", ""  # every plan has its rows (results or errors)
    else:
        state, who = "interrupted", ""
    return Status(
        experiment_uri, state, dict(seeds), dict(plans), survey.damaged, who, _phase(manifest)
    )


def _phase(manifest: Manifest) -> str:
    """Which phase a tuned sweep is in; "" for an untuned one."""
    if manifest.tune is None:
        return ""
    if manifest.picks is None:
        return (
            "tuning (the confirmation is planned once every tuning trial has its rows; "
            "`fgray resume` continues the tuning and then runs it)"
        )
    skipped = [group for group, pick in manifest.picks.items() if pick["lr"] is None]
    text = "confirmation at the picked rates"
    if skipped:
        text += f"; no rate qualified for {', '.join(skipped)}: no confirmation trials there"
    return text

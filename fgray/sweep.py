"""The sweep driver: runs an experiment's planned trials on Ray Tune, and resumes it.

`launch` checks everything it can before Ray starts (storage writable, experiment new or
overwritten, resources present), saves the manifest (fgray.experiment) and runs one Tune trial
per planned trial, in consecutive Tune runs of at most `trials_per_run` trials: Tune keeps every
trial of a run in the driver's memory, so a run per chunk keeps a 10,000-trial sweep's driver as
small as a 1,000-trial one's. The first run is Tune's experiment at the experiment directory;
later ones nest inside it. `resume` restores the last Tune run (finished trials stay finished,
unfinished ones continue from their checkpoints, errored ones are retried; not when Tune's state
names a checkpoint gone from storage, which Tune would fail to restore) and then re-runs every
trial whose results are missing or damaged, from its newest checkpoint if it has one
(`fgray.experiment.survey` decides, as `fgray status` predicts), so every seed ends up in the
results exactly once. A spec with `tune:` runs in two phases (`_confirm`): the tuning trials,
then, from their rows, each group's picked rate and its confirmation trials, recorded in the
manifest before they run, so resume continues either phase like any other trials."""

from __future__ import annotations

import gc
import os
import signal
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fgray import experiment, preflight, results, tunelog
from fgray.experiment import ExperimentError, Manifest
from fgray.spec import TUNING, PlannedTrial, SweepSpec, confirmation_trials


class SweepError(ExperimentError):
    """The sweep cannot start or continue; the message says why and what to run instead."""


def connect(address: str | None = None, num_cpus: int | None = None, verbose: int = 1) -> None:
    """Join a cluster (`address`, or RAY_ADDRESS) or start Ray on this machine, dashboard off.
    At verbose 0 the workers' own log lines stay in Ray's log files."""
    import ray

    if ray.is_initialized():
        return
    check_reachable(address or os.environ.get("RAY_ADDRESS"))
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose > 0}
    # ray.init replaces the SIGTERM handler with one that exits mid-Tune (Ray's C++ then aborts
    # with a crash dump); keep the caller's, e.g. the CLI's stop-cleanly-like-Ctrl-C.
    sigterm = signal.getsignal(signal.SIGTERM)
    if address:
        context = ray.init(address=address, **kwargs)
    elif os.environ.get("RAY_ADDRESS"):
        context = ray.init(**kwargs)
    else:
        # "local": a Ray of our own, even where another one runs on this machine (ray.init
        # would join that one, and then refuse num_cpus with a traceback).
        context = ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1", **kwargs)
    tunelog.quiet_handled_messages(context.address_info.get("session_dir"))
    if threading.current_thread() is threading.main_thread() and sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)


CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse a cluster address where nothing answers, in seconds: ray.init would retry for
    minutes. Only `host:port` forms are probed ("auto" is found by Ray itself)."""
    if not address or address in ("auto", "local"):
        return
    host, colon, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not colon or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise SweepError(
            f"no Ray cluster answers at {address} ({reason}); start one there with "
            "`ray start --head`, fix --address (or RAY_ADDRESS), or leave it out to run on "
            "this machine"
        ) from None


def check_storage_reaches_the_trials(storage: str, cpu: float, shared: bool = False) -> None:
    """A local storage path is only safe where every trial runs on this machine: a trial on
    another node would write its checkpoints and results to that node's own disk, where resume,
    status and analyze never find them. Refuse it before anything starts, unless the user says
    the path is a mount every node shares (NFS and the like)."""
    import pyarrow.fs as pafs
    import ray

    loc = experiment.locate(storage)
    if shared or not isinstance(loc.fs, pafs.LocalFileSystem):
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    me = ray.get_runtime_context().get_node_id()
    here = {n["NodeManagerAddress"] for n in nodes if n["NodeID"] == me}
    elsewhere = sorted({n["NodeManagerAddress"] for n in nodes} - here)
    cpus_here = sum(n["Resources"].get("CPU", 0) for n in nodes if n["NodeManagerAddress"] in here)
    if not elsewhere and cpus_here >= cpu:
        return
    where = (
        f"trials would run on other machines ({', '.join(elsewhere)})"
        if elsewhere
        else "this machine has no CPUs for trials, so they would run on nodes yet to join"
    )
    raise SweepError(
        f"storage {loc.uri} is a local path, but {where} that cannot see it; use object "
        "storage (--storage s3://BUCKET/PREFIX, with credentials on every node: an instance "
        "profile, or the AWS_* environment variables), or, if every node mounts this path "
        "(e.g. NFS), pass --shared-storage"
    )


def check_resources(manifest: Manifest) -> None:
    """A GPU request on a GPU-less cluster would pend forever: refuse it up front."""
    import ray

    available = ray.cluster_resources()
    gpu, cpu = manifest.resources.get("gpu", 0), manifest.resources.get("cpu", 1)
    if gpu > 0 and available.get("GPU", 0) < gpu:
        raise SweepError(
            f"each trial asks for gpu: {gpu} but the Ray cluster has "
            f"{available.get('GPU', 0):g} GPUs; set resources.gpu: 0 or add GPU nodes"
        )
    if cpu > available.get("CPU", 0):
        raise SweepError(
            f"each trial asks for cpu: {cpu} but the Ray cluster has "
            f"{available.get('CPU', 0):g} CPUs; lower resources.cpu"
        )


# -- Tune ------------------------------------------------------------------------------------------
CREDENTIAL_VARIABLES = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SECURITY_TOKEN",
    "AWS_SESSION_TOKEN",
}


def _keep_credentials_off_trials() -> None:
    """Ray Tune copies the driver's AWS_* credentials into every trial's runtime env, which
    Ray's runtime-env agent then logs in plain text on every node (and Ray keeps with the
    actor). Every node reads its own credentials the standard way (an instance profile, or
    AWS_* variables set where its `ray start` runs), so the driver's must not travel."""
    from ray.tune.execution import class_cache

    propagated = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if isinstance(propagated, (set, frozenset)):
        class_cache.ENV_VARS_TO_PROPAGATE = set(propagated) - CREDENTIAL_VARIABLES


def _trainable(
    manifest: Manifest,
    plans: Sequence[PlannedTrial],
    resume_from: Mapping[str, Sequence[str]] | None = None,
) -> Any:
    """run_trial with the run's plans attached (Tune's config then holds only the plan's name,
    which is what its progress table shows) and the spec's per-trial resources."""
    from ray import tune

    from fgray.trainable import run_trial

    _keep_credentials_off_trials()
    return tune.with_resources(
        tune.with_parameters(
            run_trial, plans={p.name: p for p in plans}, resume_from=dict(resume_from or {})
        ),
        {k: float(v) for k, v in manifest.resources.items()},
    )


def _scheduler(manifest: Manifest) -> Any:
    if manifest.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    from fgray.trainable import ITERATION, MEDIAN_TRAIN_LOSS

    max_t = max(p.config.max_iters for p in manifest.plans)
    return ASHAScheduler(
        time_attr=ITERATION,
        metric=MEDIAN_TRAIN_LOSS,
        mode="min",
        max_t=max_t,
        grace_period=max(1, max_t // 16),
        reduction_factor=2,
    )


def _run_config(manifest: Manifest, name: str, verbose: int) -> Any:
    from ray import tune

    # The sweep's first Tune run is <storage>/<name>; later runs nest inside it.
    if name == manifest.name:
        storage = experiment.locate(manifest.storage).uri
    else:
        storage = manifest.experiment_uri
    return tune.RunConfig(
        name=name,
        storage_path=storage,
        verbose=verbose,
        failure_config=tune.FailureConfig(max_failures=manifest.max_failures),
        # Tune also saves its experiment state after every num_to_keep trial checkpoints, so a
        # killed driver's trials resume from a checkpoint at most one behind their newest.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
    )


def _tuner(
    manifest: Manifest,
    plans: Sequence[PlannedTrial],
    name: str,
    verbose: int,
    resume_from: Mapping[str, Sequence[str]],
) -> Any:
    from ray import tune

    from fgray.trainable import PLAN

    return tune.Tuner(
        _trainable(manifest, plans, resume_from),
        param_space={PLAN: tune.grid_search([p.name for p in plans])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=manifest.max_concurrent,
            scheduler=_scheduler(manifest),
            reuse_actors=True,
            # A trial's directory is named after its plan: fgray.experiment finds checkpoints so.
            trial_name_creator=lambda trial: trial.config[PLAN],
            trial_dirname_creator=lambda trial: trial.config[PLAN],
        ),
        run_config=_run_config(manifest, name, verbose),
    )


def _fit(tuner: Any) -> tuple[dict[str, str], bool]:
    """Run the Tuner; return plan name -> error for trials that failed past max_failures, and
    whether the run ended (False when Ctrl-C stopped it with trials unfinished)."""
    from fgray.trainable import PLAN, TRIAL_ERROR

    grid = tuner.fit()
    errors = {}
    for result in grid:
        if result.error is not None and result.config:
            errors[result.config[PLAN]] = str(result.error).strip().splitlines()[-1]
        elif result.config and (result.metrics or {}).get(TRIAL_ERROR):
            errors[result.config[PLAN]] = result.metrics[TRIAL_ERROR]  # not retried
    return errors, grid.num_terminated + grid.num_errors == len(grid)


def _run_in_chunks(
    manifest: Manifest,
    plans: Sequence[PlannedTrial],
    verbose: int,
    resume_from: Mapping[str, Sequence[str]] | None = None,
) -> tuple[dict[str, str], bool]:
    """Run the plans as consecutive Tune runs of at most `trials_per_run` trials each. Tune
    holds every trial of a run in the driver (70 kB or so each), so this bounds the driver's
    memory whatever the sweep's size. Stops after a run that Ctrl-C interrupted."""
    errors: dict[str, str] = {}
    for start in range(0, len(plans), manifest.trials_per_run):
        chunk = plans[start : start + manifest.trials_per_run]
        run = manifest.start_run()
        run_errors, ended = _fit(_tuner(manifest, chunk, run, verbose, resume_from or {}))
        errors.update(run_errors)
        gc.collect()  # Tune's trials hold reference cycles: free this run's before the next
        if not ended:
            return errors, False
    return errors, True


# -- outcomes --------------------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    experiment_uri: str
    plans: int
    complete: int
    errored: dict[str, str]  # plan name -> error
    corrupt: dict[str, str]

    @property
    def finished(self) -> bool:
        return self.complete == self.plans

    @property
    def results_uris(self) -> str:
        """Where the rows are, as the CLI prints it."""
        uri = self.experiment_uri
        return f"{results.trials_uri(uri)} and {results.history_uri(uri)}"


def _scan(manifest: Manifest) -> results.Scan:
    return results.scan(manifest.experiment_uri, manifest.seeds())


def _finish(manifest: Manifest, errors: dict[str, str]) -> SweepOutcome:
    """Record error rows for failed plans and count what is complete."""
    scan = _scan(manifest)
    for plan in manifest.plans:
        if plan.name in errors and plan.name not in scan.complete:
            results.write_error(plan, errors[plan.name])
    scan = _scan(manifest)
    complete = sum(1 for p in manifest.plans if p.name in scan.complete and p.name not in errors)
    return SweepOutcome(
        manifest.experiment_uri, len(manifest.plans), complete, errors, scan.corrupt
    )


# -- launch and resume -----------------------------------------------------------------------------
def launch(
    spec: SweepSpec,
    *,
    address: str | None = None,
    overwrite: bool = False,
    num_cpus: int | None = None,
    verbose: int = 1,
    shared_storage: bool = False,
) -> SweepOutcome:
    """Start a new sweep from a validated spec and run it to the end."""
    manifest = Manifest.from_spec(spec)
    uri = manifest.experiment_uri
    check_reachable(address or os.environ.get("RAY_ADDRESS"))
    local = preflight.is_local(address)
    preflight.check_trials(((p.group, p.config) for p in spec.trials()), spec.source, local)
    preflight.check_resources(spec.resources, num_cpus, spec.source, local)
    experiment.check_writable(experiment.locate(spec.storage).uri)
    if experiment.exists(uri) and not overwrite:
        raise SweepError(
            f"experiment {spec.name!r} already exists at {uri}; continue it with "
            f"`fgray resume {uri}` or start over with `fgray sweep {spec.source} "
            "--overwrite`"
        )
    with experiment.experiment_lock(uri):
        connect(address, num_cpus, verbose)
        check_resources(manifest)
        check_storage_reaches_the_trials(
            manifest.storage, manifest.resources.get("cpu", 1), shared_storage
        )
        if overwrite:
            experiment.clear(uri)
        manifest.save()
        errors, ended = _run_in_chunks(manifest, manifest.plans, verbose)
        if ended:
            errors = _confirm(manifest, errors, verbose)
        return _finish(manifest, errors)


def resume(
    experiment_uri: str,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    verbose: int = 1,
    shared_storage: bool = False,
) -> SweepOutcome:
    """Continue an interrupted sweep, then re-run plans whose results are missing or damaged."""
    uri = experiment.locate(experiment_uri).uri
    manifest = Manifest.load(uri)
    check_reachable(address or os.environ.get("RAY_ADDRESS"))
    local = preflight.is_local(address)
    preflight.check_trials(((p.group, p.config) for p in manifest.plans), uri, local)
    preflight.check_resources(manifest.resources, num_cpus, uri, local)
    with experiment.experiment_lock(uri):
        manifest.save()  # where the experiment is now, if it was moved or copied since launch
        connect(address, num_cpus, verbose)
        check_resources(manifest)
        check_storage_reaches_the_trials(
            manifest.storage, manifest.resources.get("cpu", 1), shared_storage
        )
        errors: dict[str, str] = {}
        ended = True
        tuner = _restored_tuner(manifest)
        if tuner is not None:
            errors, ended = _fit(tuner)
        if ended:  # not after Ctrl-C; the repair run's errors are the final word
            errors = _confirm(manifest, _repair(manifest, verbose), verbose)
        return _finish(manifest, errors)


def _restored_tuner(manifest: Manifest) -> Any | None:
    """The last Tune run's saved state (earlier runs ended before it started), or None when
    there is none to restore: the driver died before Tune saved that run's first experiment
    state, the state names a checkpoint gone from storage, or Tune's files are damaged. The
    repair run then trains the unfinished plans from their newest checkpoints, which gives the
    same results (training is deterministic)."""
    from ray import tune

    uri = manifest.run_uri(manifest.last_run)
    if not (experiment.tune_state_saved(uri) and tune.Tuner.can_restore(uri)):
        return None
    # Tune's rotation deleted a checkpoint that the saved state still names (the driver died
    # between the two): restored, Tune would fail that trial max_failures + 1 times, printing
    # each failure. Restore nothing; the repair run continues every unfinished trial from its
    # newest checkpoint on storage instead.
    lost = experiment.lost_checkpoints(uri)
    if lost:
        print(
            f"fgray: Tune's saved state in {uri} names checkpoints deleted since "
            f"({_listed(lost)}); continuing the unfinished trials from their newest checkpoints"
        )
        return None
    # A trial Tune restores without a checkpoint of its own (none registered in its saved state
    # yet) continues from its newest one on storage, as `fgray status` said it would.
    survey = experiment.survey(manifest, _scan(manifest))
    try:
        return tune.Tuner.restore(
            uri,
            trainable=_trainable(manifest, manifest.plans, survey.checkpoints),
            resume_unfinished=True,
            resume_errored=True,
        )
    except Exception as exc:  # e.g. a tuner.pkl cut short by a kill
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        print(
            f"fgray: Tune's saved state in {uri} cannot be read ({type(exc).__name__}: "
            f"{reason}); re-running the unfinished trials from their checkpoints"
        )
        return None


def _listed(lost: Mapping[str, Sequence[str]], most: int = 3) -> str:
    names = [f"{trial}/{', '.join(checkpoints)}" for trial, checkpoints in lost.items()]
    more = f" and {len(names) - most} more trials" if len(names) > most else ""
    return "; ".join(names[:most]) + more


def _repair(manifest: Manifest, verbose: int) -> dict[str, str]:
    """Run again every plan without a complete, readable, error-free result: all unfinished ones
    when Tune's state was not restored, else those it did not finish, or that just failed in it.
    Each continues from its newest checkpoint in the last Tune run, or starts from iteration 0."""
    for name in _scan(manifest).damaged:
        results.remove_trial(manifest.experiment_uri, name)
    survey = experiment.survey(manifest, _scan(manifest))
    missing = [p for p in manifest.plans if survey.states[p.name] != experiment.TrialState.DONE]
    if not missing:
        return {}
    manifest.repairs += 1
    errors, _ = _run_in_chunks(manifest, missing, verbose, survey.checkpoints)
    return errors


# -- the tuning stage ------------------------------------------------------------------------------
def _confirm(manifest: Manifest, errors: dict[str, str], verbose: int) -> dict[str, str]:
    """A tuned sweep's second phase, once every tuning trial has its rows: pick each group's
    rate from them (fgray.analysis.tuning.pick_rate), record the picks (the manifest, and
    results/tuning-picks.parquet, where a group no rate qualified for says so) together with
    the confirmation plans, and run those on the confirmation seeds. The picks are a function
    of the stored tuning rows, so a driver killed before they were saved picks the same on
    resume; once saved, resume runs the recorded plans like any others (`_repair`)."""
    if manifest.tune is None or manifest.picks is not None:
        return errors
    import pandas as pd

    from fgray.analysis.tuning import pick_rate

    tuning_plans = [p for p in manifest.plans if p.phase == TUNING]
    _finish(manifest, errors)  # error rows for the tuning trials that failed for good
    scan = _scan(manifest)
    if scan.corrupt or any(p.name not in scan.complete for p in tuning_plans):
        return errors  # a tuning trial has no rows yet: resume finishes the tuning first
    trials, _ = results.load(manifest.experiment_uri)
    trials = trials[trials["phase"] == TUNING]
    tune = manifest.tune
    picks: dict[str, dict[str, Any]] = {}
    for group in dict.fromkeys(p.group for p in tuning_plans):
        picked = pick_rate(trials[trials["group"] == group], tune["pick"], tune["min_reached"])
        picks[group] = {"lr": picked.lr, "reason": picked.reason}
    plans = confirmation_trials(
        tuning_plans,
        {group: pick["lr"] for group, pick in picks.items()},
        tuple(tune["confirmation_seeds"]),
        tune["seeds_per_trial"],
    )
    rows = [
        {
            "experiment": manifest.name,
            "group": group,
            "picked_lr": pick["lr"],
            "pick": tune["pick"],
            "min_reached": tune["min_reached"],
            "reason": pick["reason"],
        }
        for group, pick in picks.items()
    ]
    results.write_picks(manifest.experiment_uri, pd.DataFrame(rows))
    manifest.picks = picks
    manifest.plans = [*manifest.plans, *plans]
    manifest.save()
    for group, pick in picks.items():
        if pick["lr"] is None and verbose:
            print(f"fgray: {group}: no confirmation trials; {pick['reason']}")
    confirmation_errors, _ = _run_in_chunks(manifest, plans, verbose)
    return {**errors, **confirmation_errors}

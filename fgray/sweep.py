"""Launching, resuming and inspecting sweeps on Ray Tune.

A sweep spec expands into trial plans (a config and a population of seeds each). `launch` checks
everything it can before Ray starts (storage writable, experiment new or overwritten, GPUs present),
writes a manifest of the plans beside Tune's own state, and runs one Tune trial per plan, in
consecutive Tune runs of at most `trials_per_run` trials: Tune keeps every trial of a run in the
driver's memory, so a run per chunk keeps a 10,000-trial sweep's driver as small as a 1,000-trial
one's. The first run is Tune's experiment at the experiment directory; later ones nest inside it.
`resume` restores the last Tune run (finished trials stay finished, unfinished ones continue from
their checkpoints, errored ones are retried) and then re-runs any plan whose results are missing or
damaged, so every seed ends up in the results exactly once.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow.fs as pafs

from fgray import results
from fgray.spec import SweepSpec, TrialPlan

MANIFEST = "fgray-sweep.json"
LOCK = "fgray.lock"
RUN_PREFIX = "run-"  # Tune runs after the first: <experiment>/run-0002, ...


class SweepError(RuntimeError):
    """The sweep cannot start or continue; the message says why and what to run instead."""


@dataclass
class Manifest:
    """What a sweep is, saved next to its results so resume and status need no spec file."""

    name: str
    experiment_uri: str
    storage: str
    plans: list[dict[str, Any]]
    resources: dict[str, float]
    max_concurrent: int | None
    scheduler: str
    max_failures: int
    spec_source: str = ""
    repairs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    trials_per_run: int = 1000
    runs: list[str] = field(default_factory=list)  # Tune runs started, oldest first

    @property
    def last_run(self) -> str:
        return self.runs[-1] if self.runs else self.name

    def run_uri(self, run: str) -> str:
        """Where a Tune run keeps its state: the experiment itself for the first, nested after."""
        if run == self.name:
            return self.experiment_uri
        return results.locate(self.experiment_uri).join(run).uri

    def start_run(self) -> str:
        """Name the next Tune run and record it before it starts, so resume can find it."""
        run = f"{RUN_PREFIX}{len(self.runs) + 1:04d}" if self.runs else self.name
        self.runs.append(run)
        self.save()
        return run

    @classmethod
    def from_spec(cls, spec: SweepSpec) -> Manifest:
        uri = spec.experiment_uri()
        plans = [trial_payload(spec, plan, uri) for plan in spec.trials()]
        return cls(
            name=spec.name,
            experiment_uri=uri,
            storage=spec.storage,
            plans=plans,
            resources=dict(spec.resources),
            max_concurrent=spec.max_concurrent,
            scheduler=spec.scheduler,
            max_failures=spec.max_failures,
            spec_source=spec.source,
            trials_per_run=spec.trials_per_run,
        )

    def rebase(self, experiment_uri: str) -> None:
        """Point the manifest (and every trial's results) at the experiment's new place."""
        self.experiment_uri = experiment_uri
        self.storage = experiment_uri.rstrip("/").rsplit("/", 1)[0]
        for plan in self.plans:
            plan["experiment_uri"] = experiment_uri

    def save(self) -> None:
        loc = results.locate(self.experiment_uri)
        loc.fs.create_dir(loc.path, recursive=True)
        # Write aside and rename, so a driver killed mid-write never leaves a cut-off manifest.
        tmp = loc.join(f"_tmp-{os.getpid()}-{MANIFEST}")
        with loc.fs.open_output_stream(tmp.path) as out:
            out.write(json.dumps(self.__dict__, indent=1).encode())
        loc.fs.move(tmp.path, loc.join(MANIFEST).path)

    @classmethod
    def load(cls, experiment_uri: str) -> Manifest:
        loc = results.locate(experiment_uri).join(MANIFEST)
        try:
            with loc.fs.open_input_stream(loc.path) as stream:
                data = json.loads(stream.read())
            if isinstance(data, dict) and "runs" not in data:  # fgray 0.1.0: one main run
                data["runs"] = [data.get("name")]
            return cls(**data)
        except (FileNotFoundError, NotADirectoryError):
            if not results.locate(experiment_uri).exists():
                raise SweepError(
                    f"{experiment_uri} does not exist (deleted, moved, or its storage is not "
                    "mounted); pass the directory the experiment is in now, or start it again "
                    "with `fgray sweep SPEC`"
                ) from None
            raise SweepError(
                f"{experiment_uri} is not an fgray experiment (no {MANIFEST}); pass "
                "the directory that `fgray sweep` printed"
            ) from None
        except OSError as exc:
            raise SweepError(f"cannot read {loc.uri} ({exc})") from None
        except (ValueError, TypeError) as exc:
            raise SweepError(
                f"{loc.uri} is damaged ({exc}); re-run the sweep with "
                "`fgray sweep SPEC --overwrite`"
            ) from None


def trial_payload(spec: SweepSpec, plan: TrialPlan, experiment_uri: str) -> dict[str, Any]:
    """Everything a trial needs, as plain JSON-able values (Tune stores it in its state)."""
    config = plan.config
    if spec.resources.get("gpu", 0) > 0:
        config = config.replace(device="cuda")
    return {
        "name": plan.name,
        "group": plan.group,
        "experiment": spec.name,
        "experiment_uri": experiment_uri,
        "config": config.to_dict(),
        "seeds": list(plan.seeds),
        "threads": max(1, int(spec.resources.get("cpu", 1))),
        "report_every": spec.report_every,
        "checkpoint_every": spec.checkpoint_every,
    }


# -- checks before launch --------------------------------------------------------------------
def check_writable(uri: str) -> None:
    """Create the directory and a probe file, or fail with a message naming the path."""
    try:
        loc = results.locate(uri)
        loc.fs.create_dir(loc.path, recursive=True)
        probe = loc.join(f"_probe-{os.getpid()}")
        with loc.fs.open_output_stream(probe.path) as out:
            out.write(b"ok")
        loc.fs.delete_file(probe.path)
    except (OSError, ValueError, results.ResultsError) as exc:
        raise SweepError(
            f"storage {uri} is not writable ({exc}); choose another `storage` in the "
            "spec or fix its permissions"
        ) from None


def experiment_exists(uri: str) -> bool:
    loc = results.locate(uri)
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.NotFound:
        return False
    return bool(loc.fs.get_file_info(pafs.FileSelector(loc.path)))


@contextlib.contextmanager
def experiment_lock(uri: str) -> Iterator[None]:
    """One driver per experiment: a second `fgray sweep`/`resume` on it refuses to start."""
    loc = results.locate(uri)
    lock = loc.join(LOCK)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    loc.fs.create_dir(loc.path, recursive=True)
    if isinstance(lock.fs, pafs.LocalFileSystem):
        _take_local_lock(uri, lock.path, me)
    else:
        _refuse_if_held(uri, lock)
        with lock.fs.open_output_stream(lock.path) as out:
            out.write(json.dumps(me).encode())
    try:
        yield
    finally:
        # Remove the lock only while it is still ours (never another driver's).
        if _read_holder(lock) == me:
            with contextlib.suppress(OSError):
                lock.fs.delete_file(lock.path)


def _read_holder(lock: results.Location) -> dict[str, Any]:
    try:
        with lock.fs.open_input_stream(lock.path) as stream:
            holder = json.loads(stream.read())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _refuse_if_held(uri: str, lock: results.Location) -> None:
    if lock.fs.get_file_info(lock.path).type != pafs.FileType.File:
        return
    holder = _read_holder(lock)
    if lock_holder_alive(holder):
        raise SweepError(
            f"{uri} is in use by fgray pid {holder.get('pid')} on {holder.get('host')}; wait "
            "for it to finish or stop it first (if that driver is gone, e.g. its machine was "
            f"replaced, delete {lock.uri} and run this again)"
        )


def _take_local_lock(uri: str, path: str, me: dict[str, Any]) -> None:
    """Check the lock, clear a dead driver's and take it, as one step between local drivers:
    flock on the experiment directory serialises them, O_EXCL makes the take itself atomic."""
    directory = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # no flock (some network filesystems): O_EXCL only
            fcntl.flock(directory, fcntl.LOCK_EX)
        _refuse_if_held(uri, results.locate(path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a dead driver's lock (a live one's was refused above)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            raise SweepError(f"{uri} is in use by another fgray process") from None
        with os.fdopen(fd, "w") as out:
            json.dump(me, out)
    finally:
        os.close(directory)  # releases the flock


def lock_holder_alive(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return bool(holder)  # another machine's driver: assume alive
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def connect(address: str | None = None, num_cpus: int | None = None, verbose: int = 1) -> None:
    """Join a cluster (`address`, or RAY_ADDRESS) or start Ray on this machine, dashboard off.
    At verbose 0 the workers' own log lines stay in Ray's log files."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose > 0}
    if address:
        ray.init(address=address, **kwargs)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
    else:
        ray.init(num_cpus=num_cpus, dashboard_host="127.0.0.1", **kwargs)


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


# -- running ---------------------------------------------------------------------------------
def _trainable(manifest: Manifest, plans: list[dict[str, Any]]) -> Any:
    """run_trial with the run's plans attached (Tune's config then holds only the plan's name,
    which is what its progress table shows) and the spec's per-trial resources."""
    from ray import tune

    from fgray.trainable import run_trial

    return tune.with_resources(
        tune.with_parameters(run_trial, plans={p["name"]: p for p in plans}),
        {k: float(v) for k, v in manifest.resources.items()},
    )


def _scheduler(manifest: Manifest) -> Any:
    if manifest.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    max_t = max(p["config"]["max_iters"] for p in manifest.plans)
    return ASHAScheduler(
        time_attr="iteration",
        metric="median_train_loss",
        mode="min",
        max_t=max_t,
        grace_period=max(1, max_t // 16),
        reduction_factor=2,
    )


def _run_config(manifest: Manifest, name: str, verbose: int) -> Any:
    from ray import tune

    # The sweep's first Tune run is <storage>/<name>; later runs nest inside it.
    if name == manifest.name:
        storage = results.locate(manifest.storage).uri
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


def _tuner(manifest: Manifest, plans: list[dict[str, Any]], name: str, verbose: int) -> Any:
    from ray import tune

    return tune.Tuner(
        _trainable(manifest, plans),
        param_space={"plan": tune.grid_search([p["name"] for p in plans])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=manifest.max_concurrent,
            scheduler=_scheduler(manifest),
            reuse_actors=True,
            trial_name_creator=lambda trial: trial.config["plan"],
            trial_dirname_creator=lambda trial: trial.config["plan"],
        ),
        run_config=_run_config(manifest, name, verbose),
    )


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


def _fit(tuner: Any) -> tuple[dict[str, str], bool]:
    """Run the Tuner; return plan name -> error for trials that failed past max_failures, and
    whether the run ended (False when Ctrl-C stopped it with trials unfinished)."""
    grid = tuner.fit()
    errors = {}
    for result in grid:
        if result.error is not None and result.config:
            errors[result.config["plan"]] = str(result.error).strip().splitlines()[-1]
    return errors, grid.num_terminated + grid.num_errors == len(grid)


def _run_in_chunks(
    manifest: Manifest, plans: list[dict[str, Any]], verbose: int
) -> tuple[dict[str, str], bool]:
    """Run the plans as consecutive Tune runs of at most `trials_per_run` trials each. Tune
    holds every trial of a run in the driver (70 kB or so each), so this bounds the driver's
    memory whatever the sweep's size. Stops after a run that Ctrl-C interrupted."""
    errors: dict[str, str] = {}
    for start in range(0, len(plans), manifest.trials_per_run):
        chunk = plans[start : start + manifest.trials_per_run]
        run_errors, ended = _fit(_tuner(manifest, chunk, manifest.start_run(), verbose))
        errors.update(run_errors)
        gc.collect()  # Tune's trials hold reference cycles: free this run's before the next
        if not ended:
            return errors, False
    return errors, True


def _finish(manifest: Manifest, errors: dict[str, str]) -> SweepOutcome:
    """Record error rows for failed plans and count what is complete."""
    scan = results.scan(manifest.experiment_uri)
    for plan in manifest.plans:
        if plan["name"] in errors and plan["name"] not in scan.complete:
            results.write_trial(
                manifest.experiment_uri,
                plan["name"],
                error_rows(plan, errors[plan["name"]]),
                pd.DataFrame(),
            )
    scan = results.scan(manifest.experiment_uri)
    complete = sum(
        1 for p in manifest.plans if p["name"] in scan.complete and p["name"] not in errors
    )
    return SweepOutcome(
        manifest.experiment_uri, len(manifest.plans), complete, errors, scan.corrupt
    )


def error_rows(plan: dict[str, Any], message: str) -> pd.DataFrame:
    frame = pd.DataFrame({"seed": plan["seeds"]})
    for key, value in plan["config"].items():
        frame[key] = value
    frame["experiment"], frame["trial_name"] = plan["experiment"], plan["name"]
    frame["group"], frame["outcome"], frame["error"] = plan["group"], "error", message
    frame["population_size"] = len(plan["seeds"])
    return frame


def launch(
    spec: SweepSpec,
    *,
    address: str | None = None,
    overwrite: bool = False,
    num_cpus: int | None = None,
    verbose: int = 1,
) -> SweepOutcome:
    """Start a new sweep from a validated spec and run it to the end."""
    manifest = Manifest.from_spec(spec)
    uri = manifest.experiment_uri
    check_writable(results.locate(spec.storage).uri)
    if experiment_exists(uri) and not overwrite:
        raise SweepError(
            f"experiment {spec.name!r} already exists at {uri}; continue it with "
            f"`fgray resume {uri}` or start over with `fgray sweep {spec.source} "
            "--overwrite`"
        )
    with experiment_lock(uri):
        if overwrite:
            _clear(uri)
        connect(address, num_cpus, verbose)
        check_resources(manifest)
        manifest.save()
        errors, _ = _run_in_chunks(manifest, manifest.plans, verbose)
        return _finish(manifest, errors)


def _clear(uri: str) -> None:
    loc = results.locate(uri)
    for info in loc.fs.get_file_info(pafs.FileSelector(loc.path)):
        if info.base_name == LOCK:
            continue
        if info.type == pafs.FileType.Directory:
            loc.fs.delete_dir(info.path)
        else:
            loc.fs.delete_file(info.path)


def resume(
    experiment_uri: str,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    verbose: int = 1,
) -> SweepOutcome:
    """Continue an interrupted sweep, then re-run plans whose results are missing or damaged."""
    uri = results.locate(experiment_uri).uri
    manifest = Manifest.load(uri)
    with experiment_lock(uri):
        if manifest.experiment_uri != uri:  # moved or copied since launch: results go here now
            manifest.rebase(uri)
            manifest.save()
        connect(address, num_cpus, verbose)
        check_resources(manifest)
        errors: dict[str, str] = {}
        ended = True
        tuner = _restored_tuner(manifest)
        if tuner is not None:
            errors, ended = _fit(tuner)
        if ended:  # not after Ctrl-C; the repair run's errors are the final word
            errors = _repair(manifest, verbose)
        return _finish(manifest, errors)


def _restored_tuner(manifest: Manifest) -> Any | None:
    """The last Tune run's saved state (earlier runs ended before it started), or None when
    there is none to restore: the driver died before Tune saved that run's first experiment
    state, or Tune's files are damaged. The repair run then trains the unfinished plans from
    scratch, which gives the same results (training is deterministic), only later."""
    from ray import tune

    uri = manifest.run_uri(manifest.last_run)
    loc = results.locate(uri)
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
    names = [i.base_name for i in infos]
    saved = any(n.startswith("experiment_state-") and n.endswith(".json") for n in names)
    if not (saved and tune.Tuner.can_restore(uri)):
        return None
    try:
        return tune.Tuner.restore(
            uri,
            trainable=_trainable(manifest, manifest.plans),
            resume_unfinished=True,
            resume_errored=True,
        )
    except Exception as exc:  # e.g. a tuner.pkl cut short by a kill
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        print(
            f"fgray: Tune's saved state in {uri} cannot be read ({type(exc).__name__}: "
            f"{reason}); re-running the unfinished trials from scratch"
        )
        return None


def _repair(manifest: Manifest, verbose: int) -> dict[str, str]:
    """Run again, from scratch, every plan without a complete, readable, error-free result,
    including one that just failed in the restored run: Tune's saved state can name a checkpoint
    that its own rotation (num_to_keep) deleted just before the driver died, and a trial restored
    from it fails every retry ("does not exist on storage anymore"); it can only start over."""
    scan = results.scan(manifest.experiment_uri)
    for part in scan.corrupt:
        name = os.path.basename(part)[: -len(".parquet")]
        results.remove_trial(manifest.experiment_uri, name)
    scan = results.scan(manifest.experiment_uri)
    missing = [
        p for p in manifest.plans if p["name"] not in scan.complete or p["name"] in scan.errored
    ]
    if not missing:
        return {}
    manifest.repairs += 1
    errors, _ = _run_in_chunks(manifest, missing, verbose)
    return errors

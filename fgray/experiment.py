"""The experiment directory: where an experiment lives and every file in it but the Parquet rows.

    <storage>/<name>/                   local path or any URI pyarrow.fs opens (s3://...)
        fgray-sweep.json                the manifest: the sweep's planned trials and its Tune runs
        fgray.lock                      the driver lock: which process runs the experiment now
        results/                        the Parquet store (fgray.results)
        <trial>/checkpoint_*/           the first Tune run: a directory per trial, its checkpoints
        experiment_state-*.json, ...    Tune's saved state of that run
        run-0002/, run-0003/, ...       later Tune runs, laid out the same way

This is the only module that knows these names, Tune's included, and the one place that decides
what `fgray resume` does with each trial (:func:`survey`), so `fgray status` can say it in advance
and both always agree. It imports neither Ray nor torch: `fgray status` reads files only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickletools
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs

from fgray.spec import PlannedTrial, SweepSpec

if TYPE_CHECKING:
    from fgray.results import Scan

MANIFEST = "fgray-sweep.json"
LOCK = "fgray.lock"
RUN_PREFIX = "run-"  # Tune runs after the first: <experiment>/run-0002, ...
# Tune's own names: a run's saved state, and a trial's checkpoint directories (Tune names a
# trial's directory after its plan: fgray.sweep sets trial_dirname_creator so).
TUNE_STATE = re.compile(r"experiment_state-.*\.json")
TUNE_CHECKPOINT = re.compile(r"checkpoint_(\d+)")


class ExperimentError(RuntimeError):
    """The experiment directory cannot be used as asked; the message says why and what to do."""


# -- where ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Location:
    """A directory or file on some pyarrow filesystem."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> Location:
        path = "/".join([self.path.rstrip("/"), *parts])
        return Location(self.fs, path, "/".join([self.uri.rstrip("/"), *parts]))

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def listing(self) -> list[pafs.FileInfo]:
        """What the directory holds (nothing when it does not exist)."""
        return self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))


def locate(uri: str) -> Location:
    """Resolve a local path (relative allowed) or a filesystem URI."""
    if "://" not in uri:
        uri = os.path.abspath(os.path.expanduser(uri))
    if _carries_credentials(uri):
        raise ExperimentError(
            f"{redacted(uri)} has credentials in it, which would be written into the "
            "experiment's manifest and printed; remove them and give every node its "
            "credentials the standard way (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an "
            "instance profile)"
        )
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, ValueError) as exc:
        raise ExperimentError(
            f"{uri} is not a path or a storage URI fgray can open ({exc}); use a local "
            "directory or e.g. s3://bucket/prefix"
        ) from None
    return Location(fs, path, uri)


def _carries_credentials(uri: str) -> bool:
    """s3://KEY:SECRET@bucket/... or ?secret_key=...: pyarrow accepts both, but fgray writes
    URIs into manifests and messages. (A secret may hold '/', so no URL parser decides this.)"""
    rest = uri.partition("://")[2]
    userinfo, at, _ = rest.partition("@")
    query = rest.partition("?")[2].lower()
    in_userinfo = bool(at) and ":" in userinfo and "/" not in userinfo.split(":", 1)[0]
    return in_userinfo or "secret_key=" in query or "session_token=" in query


def redacted(uri: str) -> str:
    """The URI as it may be shown: any credentials in it masked."""
    if not _carries_credentials(uri):
        return uri
    scheme, _, rest = uri.partition("://")
    rest = rest.partition("?")[0]
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def check_writable(uri: str) -> None:
    """Create the directory and a probe file, or fail with a message naming the path."""
    try:
        loc = locate(uri)
        loc.fs.create_dir(loc.path, recursive=True)
        probe = loc.join(f"_probe-{os.getpid()}")
        with loc.fs.open_output_stream(probe.path) as out:
            out.write(b"ok")
        loc.fs.delete_file(probe.path)
    except (OSError, ValueError, ExperimentError) as exc:
        raise ExperimentError(
            f"storage {uri} is not writable ({exc}); choose another `storage` in the "
            "spec or fix its permissions"
        ) from None


def exists(uri: str) -> bool:
    """Whether the experiment directory is there and holds anything."""
    loc = locate(uri)
    return loc.exists() and bool(loc.listing())


def clear(uri: str) -> None:
    """Delete everything in the experiment directory but the lock (`--overwrite`)."""
    loc = locate(uri)
    for info in loc.listing():
        if info.base_name == LOCK:
            continue
        if info.type == pafs.FileType.Directory:
            loc.fs.delete_dir(info.path)
        else:
            loc.fs.delete_file(info.path)


# -- the manifest --------------------------------------------------------------------------------
@dataclass
class Manifest:
    """What a sweep is, saved next to its results so resume and status need no spec file."""

    name: str
    experiment_uri: str
    storage: str
    plans: list[PlannedTrial]
    resources: dict[str, float]
    max_concurrent: int | None
    scheduler: str
    max_failures: int
    spec_source: str = ""
    repairs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    trials_per_run: int = 1000
    runs: list[str] = field(default_factory=list)  # Tune runs started, oldest first
    # A spec with `tune:`: its section, plus the confirmation seeds and seeds_per_trial that
    # fgray.spec.confirmation_trials needs; None for an untuned sweep.
    tune: dict[str, Any] | None = None
    # Once the tuning phase is over: group -> {"lr": picked rate or None, "reason": why}. The
    # confirmation plans are appended to `plans` in the same save.
    picks: dict[str, dict[str, Any]] | None = None

    @classmethod
    def from_spec(cls, spec: SweepSpec) -> Manifest:
        tune = None
        if spec.tune is not None:
            tune = {
                **spec.tune.to_dict(),
                "confirmation_seeds": list(spec.seeds),
                "seeds_per_trial": spec.seeds_per_trial,
            }
        return cls(
            name=spec.name,
            experiment_uri=spec.experiment_uri(),
            storage=spec.storage,
            plans=spec.trials(),
            resources=dict(spec.resources),
            max_concurrent=spec.max_concurrent,
            scheduler=spec.scheduler,
            max_failures=spec.max_failures,
            spec_source=spec.source,
            trials_per_run=spec.trials_per_run,
            tune=tune,
        )

    @property
    def last_run(self) -> str:
        return self.runs[-1] if self.runs else self.name

    def run_uri(self, run: str) -> str:
        """Where a Tune run keeps its state: the experiment itself for the first, nested after."""
        if run == self.name:
            return self.experiment_uri
        return locate(self.experiment_uri).join(run).uri

    def start_run(self) -> str:
        """Name the next Tune run and record it before it starts, so resume can find it."""
        run = f"{RUN_PREFIX}{len(self.runs) + 1:04d}" if self.runs else self.name
        self.runs.append(run)
        self.save()
        return run

    def seeds(self) -> dict[str, tuple[int, ...]]:
        """Trial name -> its seeds: what each trial's result rows must hold."""
        return {plan.name: plan.seeds for plan in self.plans}

    def rebase(self, experiment_uri: str) -> None:
        """Point the manifest (and every trial's results) at the experiment's new place."""
        self.experiment_uri = experiment_uri
        self.storage = experiment_uri.rstrip("/").rsplit("/", 1)[0]
        self.plans = [_moved(plan, experiment_uri) for plan in self.plans]

    def save(self) -> None:
        loc = locate(self.experiment_uri)
        loc.fs.create_dir(loc.path, recursive=True)
        document = {**self.__dict__, "plans": [plan.to_dict() for plan in self.plans]}
        # Write aside and rename, so a driver killed mid-write never leaves a cut-off manifest.
        tmp = loc.join(f"_tmp-{os.getpid()}-{MANIFEST}")
        with loc.fs.open_output_stream(tmp.path) as out:
            out.write(json.dumps(document, indent=1).encode())
        loc.fs.move(tmp.path, loc.join(MANIFEST).path)

    @classmethod
    def load(cls, experiment_uri: str) -> Manifest:
        """The manifest of the experiment at `experiment_uri`, pointing there even if the
        experiment was moved or copied since it was saved (save() then records the new place)."""
        loc = locate(experiment_uri).join(MANIFEST)
        try:
            with loc.fs.open_input_stream(loc.path) as stream:
                data = json.loads(stream.read())
            if isinstance(data, dict) and "runs" not in data:  # fgray 0.1.0: one main run
                data["runs"] = [data.get("name")]
            manifest = cls(**data)
            manifest.plans = [PlannedTrial.from_dict(plan) for plan in manifest.plans]
            here = locate(experiment_uri).uri
            if manifest.experiment_uri != here:
                manifest.rebase(here)
            return manifest
        except (FileNotFoundError, NotADirectoryError):
            if not locate(experiment_uri).exists():
                raise ExperimentError(
                    f"{experiment_uri} does not exist (deleted, moved, or its storage is not "
                    "mounted); pass the directory the experiment is in now, or start it again "
                    "with `fgray sweep SPEC`"
                ) from None
            raise ExperimentError(
                f"{experiment_uri} is not an fgray experiment (no {MANIFEST}); pass "
                "the directory that `fgray sweep` printed"
            ) from None
        except OSError as exc:
            raise ExperimentError(f"cannot read {loc.uri} ({exc})") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise ExperimentError(
                f"{loc.uri} is damaged ({type(exc).__name__}: {exc}); re-run the sweep with "
                "`fgray sweep SPEC --overwrite`"
            ) from None


def _moved(plan: PlannedTrial, experiment_uri: str) -> PlannedTrial:
    return PlannedTrial(**{**plan.__dict__, "experiment_uri": experiment_uri})


# -- the driver lock -----------------------------------------------------------------------------
def lock_uri(experiment_uri: str) -> str:
    return locate(experiment_uri).join(LOCK).uri


def this_process() -> dict[str, Any]:
    """What the lock records about its holder. Host and pid alone cannot tell a live driver
    from a dead one whose pid the kernel gave to another process since (after a reboot, pid 1
    and its neighbours are always taken); the boot id and the process's start time can."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.time(),
        "boot_id": _boot_id(),
        "started": _start_ticks(os.getpid()),
    }


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (Linux); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
        return int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22, starttime
    except (OSError, ValueError, IndexError):
        return None


def read_holder(experiment_uri: str) -> dict[str, Any]:
    """The lock's record, or {} when there is none or it cannot be read (a dead driver's)."""
    lock = locate(experiment_uri).join(LOCK)
    try:
        with lock.fs.open_input_stream(lock.path) as stream:
            holder = json.loads(stream.read())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the driver a lock names still runs. One on another machine is assumed alive."""
    if holder.get("host") != socket.gethostname():
        return bool(holder)
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or pid == os.getpid():
        return False  # kill(0 or -1, ...) would ask about whole process groups
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
        return False  # the machine rebooted since: every process of the lock's time is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    except (OverflowError, ValueError):
        return False
    # A pid now held by a process that started at another time than the holder is a reused one.
    started = holder.get("started")
    return not (isinstance(started, int) and _start_ticks(pid) not in (None, started))


def describe_holder(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}"


@contextlib.contextmanager
def experiment_lock(uri: str) -> Iterator[None]:
    """One driver per experiment: a second `fgray sweep`/`resume` on it refuses to start."""
    loc = locate(uri)
    lock = loc.join(LOCK)
    me = this_process()
    loc.fs.create_dir(loc.path, recursive=True)
    if isinstance(lock.fs, pafs.LocalFileSystem):
        _take_local_lock(uri, lock.path, me)
    else:
        _refuse_if_held(uri)
        with lock.fs.open_output_stream(lock.path) as out:
            out.write(json.dumps(me).encode())
    try:
        yield
    finally:
        # Remove the lock only while it is still ours (never another driver's).
        if read_holder(uri) == me:
            with contextlib.suppress(OSError):
                lock.fs.delete_file(lock.path)


def _refuse_if_held(uri: str) -> None:
    holder = read_holder(uri)
    if holder_alive(holder):
        raise ExperimentError(
            f"{uri} is in use by fgray {describe_holder(holder)}; wait for it to finish or stop it "
            "first (if that driver is gone, e.g. its machine was replaced, delete "
            f"{lock_uri(uri)} and run this again)"
        )


def _take_local_lock(uri: str, path: str, me: dict[str, Any]) -> None:
    """Check the lock, clear a dead driver's and take it, as one step between local drivers:
    flock on the experiment directory serialises them, O_EXCL makes the take itself atomic."""
    directory = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # no flock (some network filesystems): O_EXCL only
            fcntl.flock(directory, fcntl.LOCK_EX)
        _refuse_if_held(uri)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a dead driver's lock (a live one's was refused above)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            raise ExperimentError(f"{uri} is in use by another fgray process") from None
        with os.fdopen(fd, "w") as out:
            json.dump(me, out)
    finally:
        os.close(directory)  # releases the flock


# -- Tune's files --------------------------------------------------------------------------------
def tune_state_saved(run_uri: str) -> bool:
    """Whether Tune saved this run's experiment state (without it there is nothing to restore)."""
    return any(TUNE_STATE.fullmatch(info.base_name) for info in locate(run_uri).listing())


def checkpoints(run_uri: str) -> dict[str, tuple[str, ...]]:
    """Trial name -> URIs of its checkpoint directories in this Tune run, newest first."""
    found: dict[str, tuple[str, ...]] = {}
    run = locate(run_uri)
    for trial in run.listing():
        if trial.type != pafs.FileType.Directory:
            continue
        numbered = []
        for info in run.join(trial.base_name).listing():
            match = TUNE_CHECKPOINT.fullmatch(info.base_name)
            if match and info.type == pafs.FileType.Directory:
                numbered.append((int(match[1]), info.base_name))
        if numbered:
            found[trial.base_name] = tuple(
                run.join(trial.base_name, name).uri for _, name in sorted(numbered, reverse=True)
            )
    return found


def lost_checkpoints(run_uri: str) -> dict[str, tuple[str, ...]]:
    """Trial name -> the checkpoints that Tune's newest saved state of this run registers for it,
    that Tune would restore it from (it is unfinished or errored), but that are gone from storage.

    Tune deletes a trial's older checkpoints (num_to_keep) before it saves the state that stops
    naming them, so a driver killed in between leaves such a state; restored from it, Tune fails
    every retry of that trial and prints each failure. Tune pickles the checkpoints into its JSON
    state: their paths are read from the pickle's strings (pickletools), so nothing in the file
    runs and no Ray is needed. A state fgray cannot read this way counts as naming none."""
    run = locate(run_uri)
    states = sorted(i.base_name for i in run.listing() if TUNE_STATE.fullmatch(i.base_name))
    if not states:
        return {}
    try:  # Tune restores the newest, by name (experiment_state-<timestamp>.json)
        with run.fs.open_input_stream(run.join(states[-1]).path) as stream:
            trial_data = json.loads(stream.read())["trial_data"]
        lost: dict[str, tuple[str, ...]] = {}
        for trial_json, metadata_json in trial_data:
            if json.loads(trial_json).get("status") == "TERMINATED":
                continue  # kept as it is: Tune restores nothing of it
            registered = _pickled_checkpoints(json.loads(metadata_json).get("checkpoint_manager"))
            for trial, name in sorted(registered):
                if not run.join(trial, name).exists():
                    lost[trial] = (*lost.get(trial, ()), name)
        return lost
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _pickled_checkpoints(encoded: Any) -> set[tuple[str, str]]:
    """(trial directory, checkpoint directory) of every checkpoint path in Tune's pickled
    checkpoint manager ({"_type": "CLOUDPICKLE_FALLBACK", "value": hex} in its JSON state).
    Tune finds a moved run's checkpoints by these two names under the run's new place."""
    if not isinstance(encoded, dict) or not isinstance(encoded.get("value"), str):
        return set()
    found = set()
    for _, arg, _ in pickletools.genops(bytes.fromhex(encoded["value"])):
        if isinstance(arg, str) and "/" in arg:
            parts = arg.rstrip("/").split("/")
            if TUNE_CHECKPOINT.fullmatch(parts[-1]) and len(parts) >= 2 and parts[-2]:
                found.add((parts[-2], parts[-1]))
    return found


# -- what resume does with each trial ------------------------------------------------------------
class TrialState(StrEnum):
    """Where a planned trial stands, named by what `fgray resume` does with it."""

    DONE = "done"  # complete, readable, error-free results: kept
    IN_PROGRESS = "in progress"  # no results yet, a checkpoint: continued from the newest one
    PENDING = "pending"  # no results, no checkpoint: trained from iteration 0
    ERRORED = "errored"  # its rows record an error: retried


@dataclass(frozen=True)
class Survey:
    """Every planned trial's state, the checkpoints resume continues from, the damaged parts."""

    states: dict[str, TrialState]  # trial name -> state, in plan order
    checkpoints: dict[str, tuple[str, ...]]  # in-progress trial -> checkpoints, newest first
    damaged: dict[str, str]  # result part -> why it cannot be used

    def names(self, state: TrialState) -> list[str]:
        return [name for name, s in self.states.items() if s == state]


def survey(manifest: Manifest, scan: Scan) -> Survey:
    """What `fgray resume` will do with each trial (`fgray status` prints it; resume acts on it).

    A trial without usable results continues from its newest checkpoint in the sweep's last Tune
    run (earlier runs ended before it started), whether Tune restores it or the repair run
    re-runs it; the checkpoints of older runs are not used. `scan` is `fgray.results.scan` of
    the experiment, checked against the manifest's seeds."""
    saved = checkpoints(manifest.run_uri(manifest.last_run))
    states: dict[str, TrialState] = {}
    continued: dict[str, tuple[str, ...]] = {}
    for plan in manifest.plans:
        if plan.name in scan.errored:
            states[plan.name] = TrialState.ERRORED
        elif plan.name in scan.complete:
            states[plan.name] = TrialState.DONE
        elif plan.name in saved:
            states[plan.name] = TrialState.IN_PROGRESS
            continued[plan.name] = saved[plan.name]
        else:
            states[plan.name] = TrialState.PENDING
    return Survey(states, continued, dict(scan.corrupt))

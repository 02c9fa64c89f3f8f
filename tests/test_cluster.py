"""On a cluster for real: nodes started with the `ray` CLI, results on S3-compatible storage.

One Ray cluster for the module, started as users start one (`ray start --head`, then
`ray start --address ...` for a worker node in its own network namespace, see clustertools.py),
and one S3 endpoint (moto's server), with credentials and endpoint given to every node and
driver the standard way (AWS_* variables, AWS_ENDPOINT_URL). Every sweep is an `fgray` process
of its own, as a user runs it on the head node. What the tests show:

1. `fgray sweep SPEC --address HEAD --storage s3://...` runs its trials on the worker node (node
   ids in the rows); results, manifest, checkpoints and Tune's state land in the bucket, nothing
   under a local storage path;
2. the driver SIGKILLed mid-sweep, then `fgray status` and `fgray resume` on the s3:// URI from
   fresh processes: results identical to the uninterrupted sweep, no row lost or duplicated;
3. the worker node killed mid-sweep (its whole process tree): its trials are retried from their
   checkpoints in the bucket once a node is back, with identical results;
4. `fgray analyze s3://...` and `fgray.results.load("s3://...")` read from the bucket, and
   pyarrow.dataset reads the same rows;
5. the secret key appears in no object in the bucket, log file, report or message;
6. a local storage path on this cluster is refused before launch, pointing to object storage
   and to --shared-storage;
7. the object store going away mid-sweep and coming back: the sweep finishes, or stops with the
   exact `fgray resume` command, and nothing written before is lost.

The destructive scenarios (store outage, node loss) come last.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
import yaml
from clustertools import (
    BUCKET,
    Network,
    ObjectStore,
    RayCluster,
    Started,
    wait_for,
)
from sweeptools import FGRAY, comparable_history, comparable_trials

from fgray import results, status
from fgray.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# Four trials of two seeds; each long enough (15 checkpoints, every one uploaded to the bucket)
# to be interrupted mid-way.
SPEC = {
    "storage": "local-results",  # what a laptop spec says; --storage s3://... replaces it
    "base": {
        "model": "mlp",
        "method": "forward",
        "lr": 0.01,
        "threshold": 0.07,
        "max_iters": 600,
        "eval_every": 40,
    },
    "seeds": 8,
    "seeds_per_trial": 2,
    "report_every": 20,
    "checkpoint_every": 40,
    "max_failures": 6,
}
N_TRIALS = 4
TIMEOUT = 600  # per fgray process: generous, the machine may be busy


# -- the cluster, the store, and what ran on them ----------------------------------------------
class Setup:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.network = Network()
        self.store: ObjectStore | None = None
        self.cluster: RayCluster | None = None
        self.outputs: list[str] = []  # every message a test saw, searched for the secret
        self.reference: tuple[pd.DataFrame, pd.DataFrame] | None = None
        self.worker: Started | None = None

    def start(self) -> None:
        self.store = ObjectStore(self.network.host_ip, self.directory)
        self.cluster = RayCluster(self.directory, self.network, self.store.env())
        self.cluster.start_head()
        self.worker = self.cluster.start_worker(cpus=2)
        fs = pafs.S3FileSystem(
            access_key=self.store.access_key,
            secret_key=self.store.secret,
            endpoint_override=self.store.endpoint,
            region="us-east-1",
            allow_bucket_creation=True,
        )
        fs.create_dir(BUCKET)

    def close(self) -> None:
        """Stop what was started, each part even when another fails."""
        try:
            if self.cluster is not None:
                self.cluster.close()
        finally:
            try:
                if self.store is not None:
                    self.store.close()
            finally:
                self.network.remove()

    def spec(self, name: str, **fields: Any) -> Path:
        path = self.directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, **SPEC, **fields}, sort_keys=False))
        return path

    def sweep_args(self, name: str) -> list[str]:
        """`fgray sweep` of the spec `name` on this cluster, storing in the bucket."""
        return [
            "sweep",
            str(self.spec(name)),
            "--address",
            self.cluster.address,
            "--storage",
            f"s3://{BUCKET}/sweeps",
            "--verbose",
            "0",
        ]

    def fgray(self, *args: str, log: str, cwd: Path | None = None) -> Started:
        """An `fgray` process on the head node, with the cluster's environment."""
        env = {**self.cluster.env, "PYTHONUNBUFFERED": "1"}
        return Started([*FGRAY, *args], self.directory / log, env, cwd=cwd or self.directory)

    def finish(self, process: Started, timeout: float = TIMEOUT) -> tuple[int, str]:
        try:
            code = process.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"fgray did not finish:\n{process.text()[-3000:]}") from None
        text = process.text()
        self.outputs.append(text)
        return code, text

    def run(self, *args: str, log: str, cwd: Path | None = None) -> tuple[int, str]:
        return self.finish(self.fgray(*args, log=log, cwd=cwd))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[Setup]:
    # Ray's unix sockets live under the temp dirs: keep their paths short.
    directory = Path(tmp_path_factory.mktemp("cluster"))
    short = Path("/tmp") / f"fgc-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        short.unlink()
    short.symlink_to(directory)
    setup = Setup(short)
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ENDPOINT_URL",
            "AWS_DEFAULT_REGION",
            "AWS_EC2_METADATA_DISABLED",
        )
    }
    try:
        setup.start()
        os.environ.update(setup.store.env())  # this process reads the bucket as any reader
        yield setup
    finally:
        setup.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        short.unlink()


def _s3(prefix: str) -> str:
    return "/".join([f"s3://{BUCKET}", *filter(None, [prefix])])


def bucket(prefix: str) -> dict[str, int]:
    """Every object under s3://BUCKET/prefix, by path relative to it, with its size."""
    fs, path = pafs.FileSystem.from_uri(_s3(prefix))
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return {i.path[len(path) + 1 :]: i.size for i in infos if i.type == pafs.FileType.File}


def read_object(prefix: str, name: str) -> bytes:
    fs, path = pafs.FileSystem.from_uri(f"{_s3(prefix)}/{name}")
    with fs.open_input_stream(path) as stream:
        return stream.read()


def result_parts(prefix: str) -> set[str]:
    return {n for n in bucket(prefix) if n.startswith("results/trials/") and "/_" not in n}


def assert_same_results(uri: str, reference: tuple) -> pd.DataFrame:
    trials, history = results.load(uri)
    assert not trials.duplicated(["group", "seed"]).any()
    assert not history.duplicated(["trial_name", "seed", "iteration"]).any()
    assert sorted(trials.seed) == list(range(SPEC["seeds"]))
    pd.testing.assert_frame_equal(comparable_trials(trials), comparable_trials(reference[0]))
    pd.testing.assert_frame_equal(comparable_history(history), comparable_history(reference[1]))
    return trials


@pytest.fixture(scope="module")
def reference(setup) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sweep run once, uninterrupted, on the cluster: what every interrupted one must give."""
    if setup.reference is None:
        run_dir = setup.directory / "driver-cwd"
        run_dir.mkdir()
        code, text = setup.run(*setup.sweep_args("reference"), log="reference.log", cwd=run_dir)
        assert code == 0, text[-3000:]
        assert f"trials complete: {N_TRIALS}/{N_TRIALS}" in text
        setup.reference = results.load(f"s3://{BUCKET}/sweeps/reference")
    return setup.reference


# -- 1. trials on the worker node, everything in the bucket -----------------------------------
def test_trials_run_on_the_worker_node_and_everything_lands_in_the_bucket(setup, reference):
    trials, history = reference
    worker_id = setup.cluster.node_id(setup.worker)
    assert len(trials) == SPEC["seeds"] and set(trials.outcome) <= {"reached", "censored"}
    assert set(trials.node_id) == {worker_id}  # the head has no CPUs: every trial ran there
    assert len(history) == int((trials.iterations_run + 1).sum())

    stored = bucket("sweeps/reference")
    names = {f"g000-s{2 * i:05d}-{2 * i + 1:05d}" for i in range(N_TRIALS)}
    assert {f"results/{kind}/{n}.parquet" for kind in ("trials", "history") for n in names} <= set(
        stored
    )
    assert "fgray-sweep.json" in stored and "tuner.pkl" in stored  # the manifest, Tune's state
    assert any(re.fullmatch(r"experiment_state-.*\.json", n) for n in stored)
    for n in names:  # each trial's checkpoints (Tune keeps the newest two)
        assert any(re.fullmatch(rf"{n}/checkpoint_\d+/loop_state\.pt", s) for s in stored), n
    assert "fgray.lock" not in stored  # released at the end

    # Nothing on local disk: no local storage path made (the spec's, or Tune's default), and
    # no result part, manifest or checkpoint anywhere under the driver's directory or the
    # nodes' Ray directories (Tune keeps only its own scratch copies of its logs there).
    assert sorted(p.name for p in (setup.directory / "driver-cwd").iterdir()) == []
    assert not (Path.home() / "ray_results" / "reference").exists()
    local = [
        p
        for p in setup.directory.rglob("*")
        if p.is_file()
        and (p.suffix == ".parquet" or p.name in ("fgray-sweep.json", "loop_state.pt"))
    ]
    assert local == []


# -- 4. read straight from the bucket, by fgray and by a reader nobody here wrote -------------
def test_analyze_and_load_read_the_bucket_and_pyarrow_dataset_reads_the_same_rows(
    setup, reference, tmp_path, capsys
):
    uri = f"s3://{BUCKET}/sweeps/reference"
    trials, _ = results.load(uri)

    dataset = pads.dataset(f"{uri}/results/trials", format="parquet")  # skips _tmp-* names
    foreign = dataset.to_table().to_pandas()
    key = ["trial_name", "seed"]
    pd.testing.assert_frame_equal(
        foreign.sort_values(key).reset_index(drop=True),
        trials.sort_values(key).reset_index(drop=True),
        check_dtype=False,
    )

    # The analysis of the bucket is the analysis of a local copy of it.
    copy = tmp_path / "copy"
    s3, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(
        path, str(copy), source_filesystem=s3, destination_filesystem=pafs.LocalFileSystem()
    )
    report = setup.directory / "report"  # searched for the secret with the logs
    assert main(["analyze", uri, "--out", str(report)]) == 0
    assert main(["analyze", str(copy), "--out", str(tmp_path / "from-copy")]) == 0
    setup.outputs.append(capsys.readouterr().out)
    from_s3 = (report / "report.md").read_text()
    from_copy = (tmp_path / "from-copy" / "report.md").read_text()
    assert from_s3.replace(uri, "EXP") == from_copy.replace(str(copy), "EXP")
    setup.outputs.append(from_s3)


# -- 6. a local path on a multi-machine cluster is refused --------------------------------------
def test_a_local_storage_path_on_the_cluster_is_refused_before_launch(setup):
    spec = setup.spec("local", storage=str(setup.directory / "local-storage"))
    code, text = setup.run(
        "sweep", str(spec), "--address", setup.cluster.address, "--verbose", "0", log="local.log"
    )
    assert code == 2, text[-3000:]
    assert "is a local path" in text and "s3://" in text and "--shared-storage" in text
    assert "Traceback" not in text
    written = [p for p in (setup.directory / "local-storage").rglob("*") if p.is_file()]
    assert written == []  # no manifest, no Tune state: nothing launched


# -- 2. the driver killed, then status and resume from fresh processes -------------------------
def test_a_killed_driver_resumes_from_the_bucket_to_identical_results(setup, reference):
    uri = f"s3://{BUCKET}/sweeps/killed"
    driver = setup.fgray(*setup.sweep_args("killed"), log="killed.log")

    def a_trial_checkpointed_twice() -> bool:
        stored = bucket("sweeps/killed")
        per_trial = [n.split("/")[0] for n in stored if n.endswith("/loop_state.pt")]
        return any(per_trial.count(t) >= 2 for t in set(per_trial)) or not driver.alive()

    wait_for(
        a_trial_checkpointed_twice, TIMEOUT, "a trial with two checkpoints in the bucket", 0.05
    )
    time.sleep(1.0)  # Tune saves its state after every second checkpoint of a trial
    driver.kill()
    setup.outputs.append(driver.text())
    assert driver.process.returncode == -9, f"the sweep ended first:\n{driver.text()[-3000:]}"
    assert len(result_parts("sweeps/killed")) < N_TRIALS

    code, text = setup.run("status", uri, log="killed-status.log")
    assert code == 0, text
    assert "state: interrupted" in text and f"`fgray resume {uri}`" in text

    code, text = setup.run(
        "resume", uri, "--address", setup.cluster.address, "--verbose", "0", log="resumed.log"
    )
    assert code == 0, text[-3000:]
    assert_same_results(uri, reference)
    finished = status.experiment_status(uri)
    assert finished.state == "finished" and finished.seeds["all"]["done"] == SPEC["seeds"]


# -- 7. the object store goes away mid-sweep and comes back ------------------------------------
def test_the_object_store_going_away_mid_sweep_loses_nothing(setup, reference):
    uri = f"s3://{BUCKET}/sweeps/outage"
    driver = setup.fgray(*setup.sweep_args("outage"), log="outage.log")
    wait_for(
        lambda: result_parts("sweeps/outage") or not driver.alive(),
        TIMEOUT,
        "a first finished trial",
        0.05,
    )
    before = {n: read_object("sweeps/outage", n) for n in result_parts("sweeps/outage")}
    history = {n.replace("/trials/", "/history/") for n in before}
    before.update({n: read_object("sweeps/outage", n) for n in history})
    assert len(before) < 2 * N_TRIALS, "the sweep finished before the store could go away"

    setup.store.stop()  # every client's connections cut, new ones refused
    try:
        time.sleep(8)
    finally:
        setup.store.start()
    code, text = setup.finish(driver)
    print(f"\nobject store outage: the sweep {'finished by itself' if code == 0 else 'stopped'}")
    if code != 0:  # it stopped: it must say exactly how to continue
        assert f"fgray resume {uri}`" in text, text[-3000:]
        code, text = setup.run(
            "resume",
            uri,
            "--address",
            setup.cluster.address,
            "--verbose",
            "0",
            log="outage-resume.log",
        )
        assert code == 0, text[-3000:]
    assert_same_results(uri, reference)
    for name, content in before.items():  # written before the outage: still there, unchanged
        assert read_object("sweeps/outage", name) == content, name


# -- 3. the worker node killed mid-sweep, then a node comes back ------------------------------
def test_trials_of_a_killed_worker_node_continue_from_the_bucket_on_a_new_node(setup, reference):
    uri = f"s3://{BUCKET}/sweeps/nodeloss"
    lost = setup.worker
    lost_id = setup.cluster.node_id(lost)
    driver = setup.fgray(*setup.sweep_args("nodeloss"), log="nodeloss.log")

    def running_trials_checkpointed() -> bool:
        stored = bucket("sweeps/nodeloss")
        done = {n.split("/")[-1][: -len(".parquet")] for n in result_parts("sweeps/nodeloss")}
        running = {n.split("/")[0] for n in stored if n.endswith("/loop_state.pt")} - done
        return len(running) >= 2 or not driver.alive()

    wait_for(running_trials_checkpointed, TIMEOUT, "both running trials checkpointed", 0.05)
    assert driver.alive(), driver.text()[-3000:]
    lost.kill()  # the raylet and everything it started, at the same instant
    time.sleep(5)  # the trials fail over to... nothing: the head takes no trials
    assert driver.alive(), driver.text()[-3000:]
    replacement = setup.cluster.start_worker(cpus=2)
    setup.worker = replacement

    code, text = setup.finish(driver)
    assert code == 0, text[-3000:]
    trials = assert_same_results(uri, reference)
    new_id = setup.cluster.node_id(replacement)
    assert set(trials.node_id) <= {lost_id, new_id}
    continued = trials[trials.restored_from_iteration.notna()]
    assert len(continued) > 0, "no trial continued from a checkpoint in the bucket"
    assert (continued.restored_from_iteration > 0).all()
    assert set(continued.node_id) == {new_id}


# -- 5. the secret key appears nowhere ---------------------------------------------------------
def test_the_secret_key_appears_in_no_object_log_report_or_message(setup, reference, capsys):
    secret = setup.store.secret.encode()
    # A storage URI carrying credentials is refused without echoing them.
    key = setup.store.access_key
    for command in (
        ["status", f"s3://{key}:{setup.store.secret}@{BUCKET}/sweeps/reference"],
        [
            "analyze",
            f"s3://{BUCKET}/sweeps/reference?access_key={key}&secret_key={setup.store.secret}",
        ],
        ["sweep", str(setup.spec("uri")), "--storage", f"s3://{key}:{setup.store.secret}@b/p"],
    ):
        assert main(command) == 2
        captured = capsys.readouterr()
        assert "has credentials in it" in captured.err, captured
        setup.outputs.append(captured.out + captured.err)

    everything = bucket("")
    assert any(n.endswith(".parquet") for n in everything)
    leaks = [n for n in everything if secret in read_object("", n)]
    assert leaks == [], f"the secret is in the bucket: {leaks}"
    # Every file under the cluster's directory: the nodes' Ray logs (the trials' output,
    # Ray's runtime-env agent, raylet, GCS), the fgray processes' logs, the reports, except
    # the S3 server's own request logs.
    files = [
        p
        for p in setup.directory.rglob("*")
        if p.is_file() and not p.is_symlink() and not p.name.startswith(("moto", "relay"))
    ]
    assert len(files) > 50  # Ray's logs are there to search
    leaks = [str(p) for p in files if secret in p.read_bytes()]
    assert leaks == [], f"the secret is on disk: {leaks}"
    assert [o for o in setup.outputs if setup.store.secret in o] == []

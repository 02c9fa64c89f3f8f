"""The Parquet results store: the only module that knows where results live and what they hold.

Layout under an experiment directory (local path or any URI pyarrow.fs understands, e.g. s3://):

    <experiment>/results/trials/<trial_name>.parquet    one row per seed
    <experiment>/results/history/<trial_name>.parquet   one row per recorded iteration per seed

Each trial writes its two files once, when it finishes, to a temporary name that starts with "_"
(which pyarrow and pandas skip) and then renames them: history first, trials last, so a trials file
is the commit marker of a complete trial. A retried or resumed trial rewrites the same names, so no
row is ever duplicated. `pandas.read_parquet(<experiment>/results/trials)` reads the whole sweep.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fgray.config import field_types

RESULTS_DIR = "results"
TRIALS = "trials"
HISTORY = "history"

_ARROW_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}


def _config_fields() -> list[pa.Field]:
    fields = []
    for name, annotation in field_types().items():
        base = annotation.replace("| None", "").strip()
        fields.append(pa.field(name, _ARROW_TYPES[base]))
    return fields


TRIALS_SCHEMA = pa.schema(
    [
        pa.field("experiment", pa.string()),
        pa.field("trial_name", pa.string()),
        pa.field("group", pa.string()),
        *_config_fields(),
        pa.field("seed", pa.int64()),
        pa.field("population_size", pa.int64()),
        # reached | censored | diverged | error
        pa.field("outcome", pa.string()),
        pa.field("iterations_to_threshold", pa.int64()),  # null unless reached
        pa.field("seconds_to_threshold", pa.float64()),  # null unless reached
        pa.field("iterations_run", pa.int64()),  # update steps taken before the seed stopped
        pa.field("train_seconds", pa.float64()),  # training time while the seed was active
        pa.field("seconds_per_iteration", pa.float64()),  # median population step of the trial
        pa.field("final_train_loss", pa.float64()),
        pa.field("final_test_loss", pa.float64()),
        pa.field("final_test_accuracy", pa.float64()),
        pa.field("final_test_errors", pa.int64()),
        pa.field("error", pa.string()),
        pa.field("restored_from_iteration", pa.int64()),  # last checkpoint resumed from, if any
        pa.field("node_id", pa.string()),
        pa.field("hostname", pa.string()),
        pa.field("device_name", pa.string()),
        pa.field("torch_version", pa.string()),
        pa.field("ray_version", pa.string()),
        pa.field("fgray_version", pa.string()),
    ]
)

HISTORY_SCHEMA = pa.schema(
    [
        pa.field("experiment", pa.string()),
        pa.field("trial_name", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("iteration", pa.int64()),
        pa.field("train_loss", pa.float64()),
        pa.field("train_seconds", pa.float64()),
        pa.field("test_loss", pa.float64()),  # null between evaluations
        pa.field("test_accuracy", pa.float64()),
        pa.field("test_errors", pa.int64()),
        pa.field("x", pa.float64()),  # test functions: the 2-D position; null for networks
        pa.field("y", pa.float64()),
    ]
)


class ResultsError(RuntimeError):
    """The path holds no readable fgray results; the message says which path and why."""


@dataclass(frozen=True)
class Location:
    """A directory on some pyarrow filesystem."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> Location:
        path = "/".join([self.path.rstrip("/"), *parts])
        return Location(self.fs, path, "/".join([self.uri.rstrip("/"), *parts]))

    def exists(self) -> bool:
        return _exists(self)


def locate(uri: str) -> Location:
    """Resolve a local path (relative allowed) or a filesystem URI."""
    if "://" not in uri:
        uri = os.path.abspath(os.path.expanduser(uri))
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, ValueError) as exc:
        raise ResultsError(
            f"{uri} is not a path or a storage URI fgray can open ({exc}); use a local "
            "directory or e.g. s3://bucket/prefix"
        ) from None
    return Location(fs, path, uri)


def _exists(loc: Location) -> bool:
    return loc.fs.get_file_info(loc.path).type != pafs.FileType.NotFound


def _table(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Conform a frame to the schema: missing columns become nulls, extra columns are refused."""
    extra = sorted(set(df.columns) - set(schema.names))
    if extra:
        raise ValueError(f"columns not in the results schema: {extra}")
    arrays = []
    for f in schema:
        if f.name in df.columns:
            arrays.append(pa.array(df[f.name].tolist(), type=f.type, from_pandas=True))
        else:
            arrays.append(pa.nulls(len(df), type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _write_atomic(loc: Location, name: str, table: pa.Table) -> None:
    loc.fs.create_dir(loc.path, recursive=True)
    tmp = loc.join(f"_tmp-{uuid.uuid4().hex}-{name}")
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    with loc.fs.open_output_stream(tmp.path) as out:
        out.write(buffer.getvalue())
    loc.fs.move(tmp.path, loc.join(name).path)


def write_trial(
    experiment_uri: str, trial_name: str, trials: pd.DataFrame, history: pd.DataFrame
) -> None:
    """Write one finished trial's rows; safe to repeat (the same names are replaced)."""
    root = locate(experiment_uri).join(RESULTS_DIR)
    file = f"{trial_name}.parquet"
    _write_atomic(root.join(HISTORY), file, _table(history, HISTORY_SCHEMA))
    _write_atomic(root.join(TRIALS), file, _table(trials, TRIALS_SCHEMA))


@dataclass
class Scan:
    """What a results directory holds: complete trials and the parts that could not be read."""

    complete: set[str]
    errored: set[str]  # complete trials whose rows record an error instead of training results
    corrupt: dict[str, str]  # part path -> reason


def _parts(loc: Location) -> list[pafs.FileInfo]:
    if not _exists(loc):
        return []
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=False))
    return sorted(
        (
            i
            for i in infos
            if i.is_file
            and i.base_name.endswith(".parquet")
            and not i.base_name.startswith(("_", "."))
        ),
        key=lambda i: i.base_name,
    )


def _iter_parts(
    loc: Location, schema: pa.Schema
) -> Iterator[tuple[str, pa.Table | None, str | None]]:
    """Each part as (trial name, table, None), or (path, None, reason) when it cannot be read."""
    for info in _parts(loc):
        try:
            table = pq.read_table(info.path, filesystem=loc.fs)
            if not table.schema.equals(schema, check_metadata=False):
                raise ValueError("schema differs from this fgray version's")
            yield info.base_name[: -len(".parquet")], table, None
        except (pa.ArrowException, OSError, ValueError) as exc:
            yield info.path, None, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def _read_parts(loc: Location, schema: pa.Schema) -> tuple[dict[str, pa.Table], dict[str, str]]:
    tables, corrupt = {}, {}
    for key, table, reason in _iter_parts(loc, schema):
        if table is None:
            corrupt[key] = str(reason)
        else:
            tables[key] = table
    return tables, corrupt


def scan(experiment_uri: str) -> Scan:
    """Which trials are complete (both parts readable), and which parts are damaged. Reads every
    part in full (a damaged one fails to decode) but holds one at a time."""
    root = locate(experiment_uri).join(RESULTS_DIR)
    readable: dict[str, set[str]] = {TRIALS: set(), HISTORY: set()}
    errored, corrupt = set(), {}
    for kind, schema in ((TRIALS, TRIALS_SCHEMA), (HISTORY, HISTORY_SCHEMA)):
        for key, table, reason in _iter_parts(root.join(kind), schema):
            if table is None:
                corrupt[key] = str(reason)
                continue
            readable[kind].add(key)
            if kind == TRIALS and "error" in table.column("outcome").to_pylist():
                errored.add(key)
    complete = readable[TRIALS] & readable[HISTORY]
    return Scan(complete=complete, errored=errored & complete, corrupt=corrupt)


def is_experiment(uri: str) -> bool:
    return _exists(locate(uri).join(RESULTS_DIR))


def load(path: str, *, strict: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read an experiment's results as (trials, history) data frames.

    Damaged parts raise ResultsError naming them (strict) or are skipped (strict=False); a trial
    counts only when both of its parts are readable, so a half-written trial never shows up.
    """
    loc = locate(path)
    root = loc.join(RESULTS_DIR)
    if not _exists(root):
        raise ResultsError(
            f"{loc.uri} holds no fgray results (no '{RESULTS_DIR}/' directory); "
            "pass the experiment directory that `fgray sweep` printed"
        )
    trials, bad_t = _read_parts(root.join(TRIALS), TRIALS_SCHEMA)
    history, bad_h = _read_parts(root.join(HISTORY), HISTORY_SCHEMA)
    corrupt = {**bad_t, **bad_h}
    if corrupt and strict:
        listing = "; ".join(f"{p} ({why})" for p, why in corrupt.items())
        raise ResultsError(
            f"damaged result parts: {listing}. Run `fgray resume {loc.uri}` to re-run their trials"
        )
    names = sorted(set(trials) & set(history))
    trials_df = _concat([trials[n] for n in names], TRIALS_SCHEMA)
    history_df = _concat([history[n] for n in names], HISTORY_SCHEMA)
    return trials_df, history_df


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pd.DataFrame:
    if not tables:
        return schema.empty_table().to_pandas()
    return pa.concat_tables(tables).to_pandas()


def remove_trial(experiment_uri: str, trial_name: str) -> None:
    """Delete a trial's parts (used before re-running a damaged trial)."""
    root = locate(experiment_uri).join(RESULTS_DIR)
    for kind in (TRIALS, HISTORY):
        part = root.join(kind, f"{trial_name}.parquet")
        if _exists(part):
            part.fs.delete_file(part.path)

"""The Parquet results store: the schemas of an experiment's rows, the code that builds every row
(a finished trial's, a failed one's, a `fgray run`'s), and the only code that reads or writes them.

Layout under an experiment directory (located by `fgray.experiment`; a local path or any URI
pyarrow.fs understands, e.g. s3://):

    <experiment>/results/trials/<trial_name>.parquet    one row per seed
    <experiment>/results/history/<trial_name>.parquet   one row per recorded iteration per seed

Each trial writes its two files once, when it finishes, to a temporary name that starts with "_"
(which pyarrow and pandas skip) and then renames them: history first, trials last, so a trials file
is the commit marker of a complete trial. A retried or resumed trial rewrites the same names, so no
row is ever duplicated; a part whose rows name another trial (a copy, say) counts as damaged.
`pandas.read_parquet(<experiment>/results/trials)` reads the whole sweep.
"""

from __future__ import annotations

import dataclasses
import io
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fgray.config import field_types
from fgray.experiment import ExperimentError, Location, locate
from fgray.spec import PlannedTrial

# Results live in the experiment directory: their errors are the experiment's (the old name stays
# for the code that catches it, analysis included).
ResultsError = ExperimentError

if TYPE_CHECKING:  # pandas is imported by pyarrow's to_pandas when a frame is built, so that
    import pandas as pd  # `fgray status`, which builds none, does not pay its import (~1 s)

RESULTS_DIR = "results"
TRIALS = "trials"
HISTORY = "history"

_ARROW_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}


class Outcome(StrEnum):
    """How a seed ended: the values of the trials table's `outcome` column."""

    REACHED = "reached"  # its full training-set loss fell below the threshold
    CENSORED = "censored"  # a cap (iterations or seconds) stopped it first
    DIVERGED = "diverged"  # a non-finite loss or parameter stopped it
    ERROR = "error"  # its trial failed; `error` says why


@dataclass(frozen=True)
class SeedResult:
    """One seed's result as the loop hands it over: the training columns of a trials row."""

    seed: int
    outcome: str  # an Outcome
    iterations_to_threshold: int | None
    seconds_to_threshold: float | None
    iterations_run: int
    train_seconds: float
    final_train_loss: float
    final_test_loss: float
    final_test_accuracy: float
    final_test_errors: int | None


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
        pa.field("phase", pa.string()),  # tuned sweeps: tuning | confirmation; else null
        pa.field("picked_lr", pa.float64()),  # confirmation rows: the rate the tuning picked
        *_config_fields(),
        pa.field("seed", pa.int64()),
        pa.field("population_size", pa.int64()),
        pa.field("n_params", pa.int64()),  # parameters per seed: the size a scaling study varies
        pa.field("outcome", pa.string()),  # an Outcome
        pa.field("iterations_to_threshold", pa.int64()),  # null unless reached
        pa.field("seconds_to_threshold", pa.float64()),  # null unless reached
        pa.field("iterations_run", pa.int64()),  # update steps taken before the seed stopped
        pa.field("train_seconds", pa.float64()),  # training time while the seed was active
        pa.field("seconds_per_iteration", pa.float64()),  # median population step of the trial
        pa.field("final_train_loss", pa.float64()),
        pa.field("final_test_loss", pa.float64()),
        pa.field("final_test_accuracy", pa.float64()),
        pa.field("final_test_errors", pa.int64()),
        # one training step of the trial's population, measured once (fgray.cost)
        pa.field("step_peak_bytes", pa.int64()),  # peak memory above what was live before it
        pa.field("step_peak_bytes_per_seed", pa.float64()),
        pa.field("step_flops_per_seed", pa.float64()),  # matmul and convolution FLOPs
        pa.field("step_forward_equivalents", pa.float64()),  # step FLOPs / one forward pass
        pa.field("step_memory_method", pa.string()),  # how the peak was measured
        pa.field("compiled", pa.bool_()),  # the whole step ran through torch.compile
        pa.field("compile_seconds", pa.float64()),  # compiling, kept off train_seconds
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
        # --diagnose-every: the estimate against the exact gradient; null on other iterations
        pa.field("grad_cosine", pa.float64()),
        pa.field("grad_norm_ratio", pa.float64()),
        pa.field("grad_relative_error", pa.float64()),
    ]
)


# -- rows --------------------------------------------------------------------------------------
def seed_rows(seeds: Sequence[SeedResult], seconds_per_iteration: float) -> pd.DataFrame:
    """One row per seed of a population: what `fgray run` prints, and a trial's rows' start."""
    import pandas as pd

    frame = pd.DataFrame([dataclasses.asdict(r) for r in seeds])
    frame["population_size"] = len(seeds)
    frame["seconds_per_iteration"] = seconds_per_iteration
    return frame


def trial_rows(
    plan: PlannedTrial,
    seeds: Sequence[SeedResult],
    seconds_per_iteration: float,
    provenance: Mapping[str, str],
    restored_from_iteration: int | None,
    step_cost: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """A finished trial's trials rows: its seeds' results, config, identity and provenance,
    and the cost of one step (`fgray.cost.StepCost.columns()`) when it was measured."""
    frame = seed_rows(seeds, seconds_per_iteration)
    for key, value in {**(step_cost or {}), **provenance}.items():
        frame[key] = value
    frame["restored_from_iteration"] = restored_from_iteration
    return _identified(frame, plan)


def error_rows(plan: PlannedTrial, message: str) -> pd.DataFrame:
    """A failed trial's trials rows: every seed, outcome `error`, and why."""
    import pandas as pd

    frame = pd.DataFrame({"seed": list(plan.seeds)})
    frame["outcome"], frame["error"] = Outcome.ERROR.value, message
    frame["population_size"] = len(plan.seeds)
    return _identified(frame, plan)


def history_rows(plan: PlannedTrial, history: pd.DataFrame) -> pd.DataFrame:
    """A trial's history rows: the loop's per-iteration frame, named for the trial."""
    return history.assign(experiment=plan.experiment, trial_name=plan.name)


def _identified(frame: pd.DataFrame, plan: PlannedTrial) -> pd.DataFrame:
    for key, value in plan.config.to_dict().items():
        frame[key] = value
    frame["n_params"] = plan.config.n_params
    frame["experiment"], frame["trial_name"], frame["group"] = (
        plan.experiment,
        plan.name,
        plan.group,
    )
    frame["phase"] = plan.phase or None
    frame["picked_lr"] = plan.picked_lr
    return frame


# -- the store ---------------------------------------------------------------------------------
def trials_uri(experiment_uri: str) -> str:
    """The trials dataset (one row per seed): what `pandas.read_parquet` reads whole."""
    return locate(experiment_uri).join(RESULTS_DIR, TRIALS).uri


def history_uri(experiment_uri: str) -> str:
    """The history dataset (one row per recorded iteration per seed)."""
    return locate(experiment_uri).join(RESULTS_DIR, HISTORY).uri


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


def write_error(plan: PlannedTrial, message: str) -> None:
    """Record a trial that failed for good: its error rows, and no history."""
    import pandas as pd

    write_trial(plan.experiment_uri, plan.name, error_rows(plan, message), pd.DataFrame())


@dataclass
class Scan:
    """What a results directory holds: complete trials and the parts that could not be used."""

    complete: set[str]
    errored: set[str]  # complete trials whose rows record an error instead of training results
    corrupt: dict[str, str]  # part path -> reason
    damaged: set[str] = dataclasses.field(default_factory=set)  # trials with a corrupt part


def _parts(loc: Location) -> list[pafs.FileInfo]:
    return sorted(
        (
            i
            for i in loc.listing()
            if i.is_file
            and i.base_name.endswith(".parquet")
            and not i.base_name.startswith(("_", "."))
        ),
        key=lambda i: i.base_name,
    )


def _iter_parts(
    loc: Location, schema: pa.Schema, seeds: Mapping[str, Sequence[int]] | None = None
) -> Iterator[tuple[str, pa.Table | None, str | None]]:
    """Each part as (trial name, table, None), or (path, None, reason) when it cannot be used:
    unreadable, another schema, or rows that are not its trial's (`seeds`: trial -> its seeds)."""
    for info in _parts(loc):
        name = _trial_of(info.base_name)
        try:
            # ParquetFile reads one file without the dataset machinery of read_table: 3x
            # faster per small part, which is most of `fgray status` on a large sweep.
            with loc.fs.open_input_file(info.path) as source:
                table = pq.ParquetFile(source).read(use_threads=False)
            if not table.schema.equals(schema, check_metadata=False):
                raise ValueError("schema differs from this fgray version's")
            _check_rows(name, table, schema is TRIALS_SCHEMA, (seeds or {}).get(name))
            yield name, table, None
        except (pa.ArrowException, OSError, ValueError) as exc:
            yield info.path, None, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def _check_rows(name: str, table: pa.Table, per_seed: bool, seeds: Sequence[int] | None) -> None:
    """A part holds its own trial's rows only: a copy of another trial's part would otherwise
    count as this one's, with the other's seeds twice and this one's missing."""
    others = set(pc.unique(table.column("trial_name")).drop_null().to_pylist()) - {name}
    if others:
        raise ValueError(f"holds rows of trial {sorted(others)[0]}, not of {name}")
    got = table.column("seed").to_pylist()
    if per_seed and len(set(got)) != len(got):
        raise ValueError(f"a seed appears in more than one row of {name}")
    if seeds is not None and not set(got) <= set(seeds):
        extra = sorted(set(got) - set(seeds))[:5]
        raise ValueError(f"holds seeds {extra} that {name} does not train")
    if seeds is not None and per_seed and len(got) != len(seeds):
        raise ValueError(f"holds {len(got)} of the {len(seeds)} seeds {name} trains")


def _read_parts(loc: Location, schema: pa.Schema) -> tuple[dict[str, pa.Table], dict[str, str]]:
    tables, corrupt = {}, {}
    for key, table, reason in _iter_parts(loc, schema):
        if table is None:
            corrupt[key] = str(reason)
        else:
            tables[key] = table
    return tables, corrupt


def scan(experiment_uri: str, seeds: Mapping[str, Sequence[int]] | None = None) -> Scan:
    """Which trials are complete (both parts readable and theirs), and which parts are damaged.
    `seeds` (trial name -> its seeds, from the manifest) also checks each part's seeds. Reads
    every part in full (a damaged one fails to decode) but holds one at a time."""
    root = locate(experiment_uri).join(RESULTS_DIR)
    readable: dict[str, set[str]] = {TRIALS: set(), HISTORY: set()}
    errored, corrupt = set(), {}
    damaged = set()
    for kind, schema in ((TRIALS, TRIALS_SCHEMA), (HISTORY, HISTORY_SCHEMA)):
        for key, table, reason in _iter_parts(root.join(kind), schema, seeds):
            if table is None:
                corrupt[key] = str(reason)
                damaged.add(_trial_of(key))
                continue
            readable[kind].add(key)
            if kind == TRIALS and Outcome.ERROR in table.column("outcome").to_pylist():
                errored.add(key)
    complete = readable[TRIALS] & readable[HISTORY]
    return Scan(complete=complete, errored=errored & complete, corrupt=corrupt, damaged=damaged)


def _trial_of(part: str) -> str:
    return part.rsplit("/", 1)[-1][: -len(".parquet")]


def is_experiment(uri: str) -> bool:
    return locate(uri).join(RESULTS_DIR).exists()


def load(path: str, *, strict: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read an experiment's results as (trials, history) data frames.

    Damaged parts raise ResultsError naming them (strict) or are skipped (strict=False); a trial
    counts only when both of its parts are readable, so a half-written trial never shows up.
    """
    loc = locate(path)
    root = loc.join(RESULTS_DIR)
    if not root.exists():
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


PICKS_FILE = "tuning-picks.parquet"
PICKS_SCHEMA = pa.schema(
    [
        pa.field("experiment", pa.string()),
        pa.field("group", pa.string()),
        pa.field("picked_lr", pa.float64()),  # null: no rate qualified, no confirmation trials
        pa.field("pick", pa.string()),
        pa.field("min_reached", pa.float64()),
        pa.field("reason", pa.string()),
    ]
)


def write_picks(experiment_uri: str, rows: pd.DataFrame) -> None:
    """Record the tuning phase's pick per group, including the groups where none qualified."""
    _write_atomic(locate(experiment_uri).join(RESULTS_DIR), PICKS_FILE, _table(rows, PICKS_SCHEMA))


def load_picks(experiment_uri: str) -> pd.DataFrame:
    """The tuned sweep's picks (one row per group); empty before the tuning phase ended."""
    part = locate(experiment_uri).join(RESULTS_DIR, PICKS_FILE)
    if not part.exists():
        return PICKS_SCHEMA.empty_table().to_pandas()
    with part.fs.open_input_file(part.path) as f:
        return pq.read_table(f, schema=PICKS_SCHEMA).to_pandas()


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pd.DataFrame:
    if not tables:
        return schema.empty_table().to_pandas()
    return pa.concat_tables(tables).to_pandas()


def remove_trial(experiment_uri: str, trial_name: str) -> None:
    """Delete a trial's parts (used before re-running a damaged trial)."""
    root = locate(experiment_uri).join(RESULTS_DIR)
    for kind in (TRIALS, HISTORY):
        part = root.join(kind, f"{trial_name}.parquet")
        if part.exists():
            part.fs.delete_file(part.path)

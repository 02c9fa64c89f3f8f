"""What fgray reads, it reads as data, never as code; what it starts, it does not expose.

- sweep specs are read with yaml.safe_load only: a `!!python/object/apply` spec is refused and
  nothing runs;
- checkpoints are read with torch.load(weights_only=True): a checkpoint holding a pickled object
  is refused (and the trainable restarts such a trial from iteration 0, see test_reliability.py);
- results are read as Parquet only: a "part" that is really a pickle is reported damaged, never
  unpickled;
- no fgray module imports pickle/marshal/shelve or calls eval/exec, yaml.load or torch.load
  without weights_only=True;
- spec names cannot climb out of the storage directory;
- Ray is started with no dashboard and with token authentication: the only HTTP endpoint among
  the ports it opens (the runtime-env agent) answers 401 without the token.

Elsewhere: cluster.yaml opens only port 22 (test_cluster_config.py), the shipped MNIST files are
md5-checked (test_data_models.py).
"""

from __future__ import annotations

import ast
import os
import pickle
import socket
from pathlib import Path

import pytest
import ray
import torch

import psutil  # isort: skip  (Ray ships psutil and puts it on the path when imported)

import fgray
from fgray import results, sweep
from fgray.cli import main
from fgray.config import TrainConfig
from fgray.loop import PopulationTrainer
from fgray.spec import SpecError, load_spec

PACKAGE = Path(fgray.__file__).parent


class Hostile:
    """Unpickling this creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# -- specs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "name: !!python/object/apply:os.system ['touch {marker}']\nstorage: s\nseeds: 1\n",
        "!!python/object/apply:os.system ['touch {marker}']\n",
        "name: x\nstorage: s\nseeds: !!python/object/new:os.system ['touch {marker}']\n",
        "name: x\nstorage: !!python/name:os.system\nseeds: 1\n",
        "name: x\nstorage: s\nseeds: 1\nbase: {{lr: !!python/object/apply:os.system "
        "['touch {marker}']}}\n",
    ],
    ids=["apply-value", "apply-document", "new-object", "python-name", "nested"],
)
def test_a_spec_with_python_tags_is_refused_and_nothing_runs(tmp_path, capsys, text):
    marker = tmp_path / "spec-code-ran"
    spec = tmp_path / "evil.yaml"
    spec.write_text(text.format(marker=marker))

    with pytest.raises(SpecError) as error:
        load_spec(spec)
    assert str(error.value).startswith(f"{spec}: ")
    assert main(["sweep", str(spec)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not marker.exists()
    assert not ray.is_initialized()


@pytest.mark.parametrize("name", ["..", "../outside", "a/b", "/etc", ".hidden", "~root"])
def test_a_spec_name_cannot_leave_the_storage_directory(tmp_path, name):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: {name!r}\nstorage: {tmp_path / 'store'}\nseeds: 1\n")

    with pytest.raises(SpecError) as error:
        load_spec(spec)
    assert error.value.key == "name"


# -- checkpoints -----------------------------------------------------------------------------------
def test_a_checkpoint_holding_a_pickled_object_is_refused_not_executed(tmp_path):
    marker = tmp_path / "checkpoint-code-ran"
    trainer = PopulationTrainer(TrainConfig(model="logreg", max_iters=3), [0, 1])
    checkpoint = tmp_path / "loop_state.pt"
    state = trainer.state_dict()
    state["config"] = Hostile(marker)
    torch.save(state, checkpoint)

    with pytest.raises(pickle.UnpicklingError) as error:
        trainer.restore(str(checkpoint))
    assert "weights_only" in str(error.value)
    assert not marker.exists()

    # the file really is hostile: a plain torch.load would have run it
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()


def test_a_genuine_checkpoint_still_restores(tmp_path):
    config = TrainConfig(model="logreg", max_iters=6)
    first = PopulationTrainer(config, [0, 1])
    first.run(until=3)
    first.save(str(tmp_path / "loop_state.pt"))
    second = PopulationTrainer(config, [0, 1])
    second.restore(str(tmp_path / "loop_state.pt"))
    assert second.iteration == 3
    assert torch.equal(second.params["W"], first.params["W"])


# -- results ---------------------------------------------------------------------------------------
def test_a_result_part_that_is_a_pickle_is_reported_damaged_never_unpickled(tmp_path):
    marker = tmp_path / "results-code-ran"
    for kind in ("trials", "history"):
        part = tmp_path / "exp" / "results" / kind / "t0.parquet"
        part.parent.mkdir(parents=True)
        part.write_bytes(pickle.dumps(Hostile(marker)))

    scan = results.scan(str(tmp_path / "exp"))
    with pytest.raises(results.ResultsError, match="damaged result parts"):
        results.load(str(tmp_path / "exp"))
    trials, _ = results.load(str(tmp_path / "exp"), strict=False)

    assert len(scan.corrupt) == 2 and scan.complete == set()
    assert trials.empty
    assert not marker.exists()


# -- the source itself -----------------------------------------------------------------------------
def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                found.append((f"{func.value.id}.{func.attr}", node))
            elif isinstance(func, ast.Name):
                found.append((func.id, node))
    return found


def test_no_fgray_module_deserialises_code():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 10
    problems = []
    for source in sources:
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                if name.split(".")[0] in {"pickle", "cloudpickle", "dill", "marshal", "shelve"}:
                    problems.append(f"{source}: imports {name}")
        for name, call in _calls(tree):
            where = f"{source}:{call.lineno}"
            if name in {"eval", "exec", "yaml.load", "yaml.unsafe_load", "yaml.full_load"}:
                problems.append(f"{where}: {name}")
            if name == "torch.load":
                weights_only = [k for k in call.keywords if k.arg == "weights_only"]
                if not (
                    weights_only
                    and isinstance(weights_only[0].value, ast.Constant)
                    and weights_only[0].value.value is True
                ):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if name in {"pd.read_pickle", "np.load"}:
                problems.append(f"{where}: {name}")
    assert problems == []


# -- Ray -------------------------------------------------------------------------------------------
def _listening(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    found = []
    for p in processes:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    found.append((p.name(), c.laddr.ip, c.laddr.port))
        except psutil.Error:
            continue
    return found


def test_ray_starts_without_a_dashboard_and_with_token_authentication(monkeypatch):
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Ray's default, whatever the shell says
    sweep.connect(num_cpus=1, verbose=0)
    try:
        node = ray._private.worker.global_worker.node
        ours = [psutil.Process(), *psutil.Process().children(recursive=True)]
        listening = _listening(ours)
        assert is_token_auth_enabled()
        assert not node.address_info.get("webui_url")
        assert 8265 not in {port for _, _, port in listening}
        # Whatever listens is Ray's own (GCS, raylet, workers, agents), and an HTTP endpoint
        # among them answers 401 without the token. (Ray binds its gRPC ports on all
        # interfaces; on a cluster the firewall opens only port 22.)
        http = []
        for name, ip, port in listening:
            ray_process = name in {"python", "gcs_server", "raylet"} or name.startswith("ray::")
            assert ray_process or name == psutil.Process().name(), name  # (this driver)
            host = "127.0.0.1" if ip in ("::", "0.0.0.0") else ip
            with socket.create_connection((host, port), timeout=2) as conn:
                conn.settimeout(2)
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                try:
                    reply = conn.recv(64)
                except (TimeoutError, ConnectionError):
                    reply = b""
                if reply.startswith(b"HTTP/"):  # an HTTP endpoint turns away who has no token
                    http.append((name, port, reply.split()[1]))
        # at least the runtime-env agent's endpoint is there to check (else this checks nothing)
        assert http and all(status in (b"401", b"403") for *_, status in http), http
    finally:
        ray.shutdown()

"""cluster.yaml is a launcher config Ray accepts, installs fgray everywhere and opens only SSH."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


def load() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_ray_launcher_accepts_the_config():
    validate_config(prepare_config(load()))  # raises on a missing or misspelt key


def test_head_cpu_and_gpu_worker_types():
    config = load()
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # trials stay off the head
    instance = {name: t["node_config"]["InstanceType"] for name, t in types.items()}
    assert any(i.startswith(("g4", "g5", "g6", "p3", "p4", "p5")) for i in instance.values())
    assert any(
        i.startswith(("c5", "c6", "c7", "m5", "m6", "m7"))
        for n, i in instance.items()
        if n != config["head_node_type"]
    )
    assert config["provider"]["type"] == "aws"


def test_every_node_installs_the_project_with_pinned_versions():
    config = load()
    assert "." in config["file_mounts"].values()
    setup = "\n".join(config["setup_commands"])
    assert "-c constraints.txt -e ." in setup


def test_only_ssh_is_open_and_the_dashboard_is_local():
    config = load()
    permissions = config["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in permissions] == [(22, 22)]
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head

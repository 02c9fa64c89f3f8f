"""A Ray cluster started the way users start one, and an S3-compatible object store, for tests.

- `ObjectStore`: moto's standalone S3 server (a real HTTP S3 endpoint), private on loopback, and
  in front of it the endpoint every client uses: a small TCP relay process on the cluster's
  address. moto keeps its objects in memory, so an outage is the relay stopping (clients get
  refused or cut-off connections, as from a restarting server) and coming back on the same
  port, while the objects stay stored, as a real object store's do.
- `RayCluster`: `ray start --head` and `ray start --address ...` for each worker node, every
  node its own process session (stopped by PID, never with `ray stop`, which would stop every
  Ray on the machine). Each worker node runs in its own Linux network namespace with its own
  IP on a veth pair, so traffic between nodes crosses an interface; where namespaces cannot be
  made (not root, no `ip`), every node runs on loopback and the reason is printed.

Everything the classes start, they stop in `close()`, which tests call from fixture finalizers.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import ray  # noqa: F401  (puts the psutil that Ray ships on the path)

import psutil  # isort: skip
import sweeptools  # isort: skip

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKET = "fgray-cluster-test"

RELAY = r"""
import socket, sys, threading
host, port, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((host, port))
server.listen(128)
print("listening", flush=True)

def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

def serve(client):
    try:
        upstream = socket.create_connection(("127.0.0.1", target))
    except OSError:
        client.close()
        return
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
    pipe(client, upstream)

while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2) -> None:
    """sweeptools.wait_for, polling less often: each poll here may list the bucket."""
    sweeptools.wait_for(predicate, timeout, what, interval)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def session_processes(leader: int) -> list[psutil.Process]:
    """Every live process in the session that `leader` started (a node's raylet, GCS, agents
    and workers; Ray gives workers process groups of their own, but not sessions)."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == leader:
                found.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def kill_session(leader: subprocess.Popen, graceful: float = 0.0) -> None:
    """SIGSTOP the whole session at once (nothing reacts to its neighbours dying), then SIGKILL
    it; with `graceful`, SIGTERM first and wait that long for a clean exit. The leader is
    reaped by its Popen (so its return code stays readable), the rest by psutil."""

    def others() -> list[psutil.Process]:
        return [p for p in session_processes(leader.pid) if p.pid != leader.pid]

    if graceful:
        for p in session_processes(leader.pid):
            with contextlib.suppress(psutil.Error):
                p.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            leader.wait(timeout=graceful)
        psutil.wait_procs(others(), timeout=graceful)
    for _ in range(2):  # a second pass catches a process started while the first ran
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for p in session_processes(leader.pid):
                with contextlib.suppress(psutil.Error):
                    p.send_signal(sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        leader.wait(timeout=30)
    psutil.wait_procs(others(), timeout=30)


class Started:
    """A command in its own session, its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str], cwd: Path | None = None):
        self.log = log
        self.process = subprocess.Popen(
            args,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, graceful: float = 0.0) -> None:
        kill_session(self.process, graceful)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Network:
    """Where the nodes live: a veth pair into a network namespace for the worker nodes, or
    loopback when a namespace cannot be made (the reason is kept in `fallback`)."""

    def __init__(self) -> None:
        self.ip = shutil.which("ip") or "/usr/sbin/ip"
        tag = os.getpid()
        self.namespace = f"fgray-{tag}"
        self.host_if, self.node_if = f"fgh{tag}", f"fgn{tag}"
        self.fallback = ""
        self.made: list[str] = []
        try:
            if os.environ.get("FGRAY_CLUSTER_LOOPBACK") == "1":
                raise OSError("FGRAY_CLUSTER_LOOPBACK=1")
            self._make()
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            self.fallback = f"{exc} {detail.decode(errors='replace').strip()}".strip()
            self.remove()
        if self.fallback:  # a worker node's own loopback address: another machine to Ray
            self.host_ip, self.node_ip = "127.0.0.1", "127.0.0.2"
            print(
                f"\ncluster tests: worker nodes run on loopback, not in a network namespace: "
                f"{self.fallback}"
            )

    def _run(self, *args: str) -> str:
        done = subprocess.run([self.ip, *args], check=True, capture_output=True, timeout=30)
        return done.stdout.decode()

    def _make(self) -> None:
        if os.geteuid() != 0:
            raise OSError("not root: network namespaces need CAP_NET_ADMIN")
        if not os.path.exists(self.ip):
            raise OSError("no `ip` command (Debian: apt-get install iproute2)")
        taken = self._run("-o", "-4", "addr", "show")
        # A private /30 of 10.213.0.0/16 that no interface of this machine uses yet.
        for third in [os.getpid() % 250, *range(250)]:
            if f" 10.213.{third}." not in taken:
                break
        self.host_ip, self.node_ip = f"10.213.{third}.1", f"10.213.{third}.2"
        self._run("netns", "add", self.namespace)
        self.made.append("netns")
        self._run("link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if)
        self.made.append("veth")
        self._run("link", "set", self.node_if, "netns", self.namespace)
        self._run("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        self._run("link", "set", self.host_if, "up")
        inside = ["netns", "exec", self.namespace, self.ip]
        self._run(*inside, "addr", "add", f"{self.node_ip}/30", "dev", self.node_if)
        self._run(*inside, "link", "set", self.node_if, "up")
        self._run(*inside, "link", "set", "lo", "up")

    def wrap(self, args: list[str]) -> list[str]:
        """The command, run inside the worker nodes' namespace (as is, on loopback)."""
        if self.fallback:
            return args
        return [self.ip, "netns", "exec", self.namespace, *args]

    def remove(self) -> None:
        if "veth" in self.made:  # deleting one end deletes the pair
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run("link", "del", self.host_if)
        if "netns" in self.made:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run("netns", "del", self.namespace)
        self.made.clear()


class ObjectStore:
    """moto's S3 server behind a relay on `host`; `stop()`/`start()` take the endpoint away
    and bring it back on the same address."""

    def __init__(self, host: str, directory: Path) -> None:
        self.host, self.directory = host, directory
        self.secret = "fgray-" + secrets.token_hex(16)  # searched for in every output
        self.access_key = "FGRAYTESTKEY" + secrets.token_hex(4).upper()
        self.backend_port = free_port()
        self.port = free_port(host)
        self.moto = Started(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.backend_port)],
            directory / "moto.log",
            {**os.environ},
        )
        self.relay: Started | None = None
        wait_for(lambda: _accepts("127.0.0.1", self.backend_port), 60, "moto's S3 server")
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables a node, a driver or a reader gets."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> None:
        self.relay = Started(
            [sys.executable, "-c", RELAY, self.host, str(self.port), str(self.backend_port)],
            self.directory / f"relay-{time.monotonic_ns()}.log",
            {**os.environ},
        )
        wait_for(lambda: "listening" in self.relay.text(), 60, "the S3 endpoint")

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.kill()

    def close(self) -> None:
        self.stop()
        self.moto.kill()


class RayCluster:
    """A head node (no CPUs: trials stay off it, as in cluster.yaml) and worker nodes, each
    started with the `ray` CLI in a session of its own."""

    def __init__(self, directory: Path, network: Network, env: dict[str, str]) -> None:
        self.directory, self.network = directory, network
        self.env = {
            **os.environ,
            **env,
            # Workers import this checkout's fgray (in CI, the installed one is the same).
            "PYTHONPATH": os.pathsep.join(
                [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "RAY_USAGE_STATS_ENABLED": "0",
            # This cluster's own token: never ~/.ray/auth_token, which others' Rays use.
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
        }
        self.env.pop("RAY_ADDRESS", None)
        self.port = free_port(network.host_ip)
        self.address = f"{network.host_ip}:{self.port}"
        self.head: Started | None = None
        self.workers: list[Started] = []

    def _ray(self, *args: str) -> list[str]:
        return [
            str(BIN / "ray"),
            "start",
            "--block",
            "--disable-usage-stats",
            "--object-store-memory=100000000",
            *args,
        ]

    def start_head(self) -> None:
        temp = self.directory / "head"
        self.head = Started(
            self._ray(
                "--head",
                "--include-dashboard=false",
                f"--node-ip-address={self.network.host_ip}",
                f"--port={self.port}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                "--num-cpus=0",
                f"--temp-dir={temp}",
            ),
            self.directory / "head.log",
            self.env,
        )
        wait_for(
            lambda: "Ray runtime started" in self.head.text() or not self.head.alive(),
            180,
            "the head node",
        )
        assert self.head.alive(), self.head.text()[-3000:]

    def start_worker(self, cpus: int = 2) -> Started:
        n = len(self.workers)
        temp = self.directory / f"worker{n}"
        args = [
            f"--address={self.address}",
            f"--node-ip-address={self.network.node_ip}",
            f"--num-cpus={cpus}",
            f"--temp-dir={temp}",
        ]
        if self.network.fallback:  # on the head's network: ports must not collide with it
            args += [
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
            ]
        worker = Started(
            self.network.wrap(self._ray(*args)), self.directory / f"worker{n}.log", self.env
        )
        self.workers.append(worker)
        wait_for(
            lambda: "Ray runtime started" in worker.text() or not worker.alive(),
            180,
            f"worker node {n}",
        )
        assert worker.alive(), worker.text()[-3000:]
        return worker

    def node_id(self, worker: Started) -> str:
        """The node id the worker's raylet took, from its own log."""
        logs = self.directory / f"worker{self.workers.index(worker)}" / "session_latest" / "logs"
        found: list[str] = []

        def logged() -> bool:
            text = (logs / "raylet.out").read_text(errors="replace") if logs.exists() else ""
            for line in text.splitlines():
                if "node_id=" in line:
                    found.append(line.split("node_id=", 1)[1].split()[0])
                    return True
            return False

        wait_for(logged, 60, "the worker's node id")
        return found[0]

    def close(self) -> None:
        for node in [*reversed(self.workers), self.head]:
            if node is not None:
                node.kill(graceful=3)

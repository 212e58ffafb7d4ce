"""A three-node Warren cluster for the Python suite (test_21_cluster.py).

Three `warren` processes on 127.0.0.1 (free AMQP, management and inter-node ports, one temp
dir), one config file naming the three in `cluster_formation.classic_config.nodes` and
holding a cookie of the test's own (`warren.cluster_cookie`, so no `$HOME/.erlang.cookie`
is read or created). The fixture waits until every node names the same Raft leader and the
seeded guest user has reached it (its `/api/warren/cluster` answers guest), and kills the
processes at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

import pika
import pytest
import requests

from conftest import BrokerProcess, find_free_port, warren_binary

# Formation, election and the seed of the guest user take about 1-3 s in a debug build on a
# loaded 2-core machine; this is the ceiling, not the expected time.
FORMATION_TIMEOUT_S = 30.0
AUTH = ("guest", "guest")


class Cluster:
    def __init__(self, nodes: list[BrokerProcess], names: list[str]):
        self.nodes = nodes
        # `NAME@HOST:PORT` of each node (the cluster's name for it, as the API shows it).
        self.names = names

    def url(self, i: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.nodes[i].port}/%2f"

    def params(self, i: int, **kw) -> pika.ConnectionParameters:
        """pika parameters for node `i`: one attempt each, so that a multi-host connect moves
        on to the next node at once when this one refuses the connection."""
        kw.setdefault("connection_attempts", 1)
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("stack_timeout", 15)
        kw.setdefault("blocked_connection_timeout", 30)
        return pika.ConnectionParameters(host="127.0.0.1", port=self.nodes[i].port, virtual_host="/",
                                         credentials=pika.PlainCredentials(*AUTH), **kw)

    def api(self, i: int, path: str, timeout: float = 5.0) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.nodes[i].mgmt_port}/api{path}", auth=AUTH, timeout=timeout)

    def status(self, i: int) -> Optional[dict]:
        """Node i's `/api/warren/cluster`, None while it does not answer (or guest is not
        there yet)."""
        try:
            r = self.api(i, "/warren/cluster", timeout=2)
        except requests.RequestException:
            return None
        return r.json() if r.status_code == 200 else None

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.nodes) if p.alive()]

    def wait_for_leader(self, timeout: float = FORMATION_TIMEOUT_S) -> int:
        """Wait until every live node names the same leader, itself live; its index."""
        deadline = time.monotonic() + timeout
        seen: dict = {}
        while True:
            live = self.alive()
            seen = {i: (self.status(i) or {}).get("leader") for i in live}
            leaders = set(seen.values())
            if len(leaders) == 1 and None not in leaders:
                leader = self.names.index(leaders.pop())
                if leader in live:
                    return leader
            if time.monotonic() >= deadline:
                logs = "\n".join(f"--- node {i} ---\n{p.log_tail(30)}" for i, p in enumerate(self.nodes))
                raise AssertionError(f"no common leader within {timeout} s: {seen}\n{logs}")
            time.sleep(0.1)

    def leader(self) -> int:
        return self.wait_for_leader()

    def kill(self, i: int) -> None:
        """kill -9 of node i."""
        self.nodes[i].stop(graceful=False)

    def node_of_connection(self, name: str, among: Optional[list[int]] = None) -> Optional[int]:
        """The node whose `/api/connections` lists a connection named `name` (the client
        property `connection_name`), None if none does."""
        for i in among if among is not None else self.alive():
            try:
                conns = self.api(i, "/connections").json()
            except (requests.RequestException, ValueError):
                continue
            if any((c.get("client_properties") or {}).get("connection_name") == name
                   or c.get("user_provided_name") == name for c in conns):
                return i
        return None


def start_cluster(d: Path) -> Cluster:
    names = [f"n{i}@127.0.0.1:{find_free_port()}" for i in (1, 2, 3)]
    conf = d / "cluster.conf"
    conf.write_text("cluster_formation.peer_discovery_backend = classic_config\n"
                    f"warren.cluster_cookie = pytest-{uuid.uuid4().hex}\n"
                    + "".join(f"cluster_formation.classic_config.nodes.{i} = {n}\n" for i, n in enumerate(names, 1)))
    nodes = [BrokerProcess(warren_binary(), d / f"n{i}", d / f"n{i}.log",
                           extra_args=["--config", str(conf), "--node-name", n.rsplit(":", 1)[0]])
             for i, n in enumerate(names, 1)]
    return Cluster(nodes, names)


@pytest.fixture
def cluster(request) -> Iterator[Cluster]:
    """A started three-node cluster with a leader; every process killed and its data removed
    afterwards. The nodes' logs are shown when the test fails."""
    if os.environ.get("AMQP_TEST_PORT"):
        pytest.skip("needs to spawn its own brokers")
    d = Path(tempfile.mkdtemp(prefix="warren-pytest-cluster-"))
    c = start_cluster(d)
    try:
        for p in c.nodes:
            p.start()
        c.wait_for_leader()
        yield c
    finally:
        for i, p in enumerate(c.nodes):
            p.stop(graceful=False)
            # Captured: pytest shows it only when the test failed.
            print(f"--- node {i} ({c.names[i]}) log ---\n{p.log_tail(60)}")
        shutil.rmtree(d, ignore_errors=True)

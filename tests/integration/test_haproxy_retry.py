"""The balancer configuration of docs/scale-out.md (tests.scale_out.haproxy_config) against a replica that closes a
connection unanswered, as a stopping replica does with one its kernel accepted but it never read: a classification
is resent to the other replica, a dataset-task submit is not. Real haproxy; the two replicas are small socket
servers, so what each does to a request is decided here, not by timing."""

from __future__ import annotations

import shutil
import socketserver
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.helpers import free_port
from tests.scale_out import RETRY_BUFFER_BYTES, Balancer, Replica

pytestmark = pytest.mark.lab  # the deployment recipe's balancer, not the product

BODY = bytes(100 * 784 + 128)  # a batch CLI request of 100 images as .npy


class Handler(socketserver.StreamRequestHandler):
    """Reads one request; closes it unanswered when its path starts with one of the server's ``drop`` prefixes,
    else answers 200 (the probes included)."""

    def handle(self) -> None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = self.rfile.readline()
            if not line:
                return
            head += line
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        self.rfile.read(length)
        path = head.split(b" ", 2)[1]
        self.server.seen.append(path)
        if path.startswith(self.server.drop):
            return  # closed unanswered
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


class FakeReplica(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, drop: tuple[bytes, ...]) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.drop, self.seen = drop, []


@pytest.fixture
def balanced(tmp_path) -> Iterator[Callable[[tuple[bytes, ...], tuple[bytes, ...]], tuple]]:
    """Starts two replicas dropping the given path prefixes and haproxy in front: (balancer, r0, r1)."""
    if not (shutil.which("haproxy") or shutil.which("/usr/sbin/haproxy")):
        pytest.skip("haproxy is not installed (apt-get install haproxy; .ci/run does this)")
    started = []

    def start(drop_r0: tuple[bytes, ...], drop_r1: tuple[bytes, ...]) -> tuple:
        servers = [FakeReplica(free_port(), drop) for drop in (drop_r0, drop_r1)]
        started.extend(servers)
        for server in servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        # Each replica's probes on its own API port: both pass, so haproxy keeps both in service.
        ports = [server.server_address[1] for server in servers]
        balancer = Balancer.start(tmp_path, [Replica(f"r{i}", port, port) for i, port in enumerate(ports)])
        started.append(balancer)
        balancer.wait_for(lambda states: states and all(s == "UP" for s in states.values()), "both replicas UP",
                          60)
        return balancer, *servers

    yield start
    for item in started:
        if isinstance(item, Balancer):
            item.stop()
        else:
            item.shutdown()
            item.server_close()


def post_all(url: str, path: str, count: int) -> list[int]:
    """The statuses of ``count`` requests, each on a connection of its own (haproxy closes one after a 502)."""
    return [httpx.post(f"{url}{path}", content=BODY, headers={"Content-Type": "application/x-npy"},
                       timeout=30).status_code for _ in range(count)]


def test_a_classification_closed_unanswered_is_resent_to_the_other_replica(balanced):
    balancer, dropping, answering = balanced((b"/classify_array",), ())
    assert len(BODY) + 1024 < RETRY_BUFFER_BYTES
    assert post_all(balancer.url, "/classify_array", 10) == [200] * 10
    assert dropping.seen.count(b"/classify_array") > 0  # round-robin sent some to the replica that drops them
    assert answering.seen.count(b"/classify_array") == 10


def test_a_task_submit_closed_unanswered_is_not_sent_twice(balanced):
    submit = b"/classify_dataset/submit"
    balancer, r0, r1 = balanced((submit,), (submit,))
    assert post_all(balancer.url, submit.decode(), 6) == [502] * 6
    assert r0.seen.count(submit) + r1.seen.count(submit) == 6  # each submit reached one replica once

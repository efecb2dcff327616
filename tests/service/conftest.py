"""Real uvicorn servers on loopback for the service tests, and a plain HTTP client that returns 4xx/5xx."""

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from heta_fast.testing import torch_threads

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

TIMEOUT = 30  # seconds per request: a tiny-model attribution takes well under one


def loopback_socket() -> socket.socket:
    # Bound here and handed to uvicorn, so there is no race for a "free" port.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


class ServerThread:
    """A real uvicorn server for ``app`` in a daemon thread; ``stop()`` shuts it down."""

    def __init__(self, app):
        self.sock = loopback_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        assert not self.thread.is_alive(), "server thread did not stop"


def http(url, method="GET", body=None, raw: bytes | None = None, timeout=TIMEOUT, headers=None):
    """(status, parsed JSON body, response headers with lower-case names) of one HTTP request; 4xx/5xx are returned, not raised."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), {k.lower(): v for k, v in e.headers.items()}


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    # Tiny models gain nothing from a second thread; on a shared machine oversubscribed threads cost seconds.
    with torch_threads(1):
        yield


def _serving():
    started = []

    def start(app):
        srv = ServerThread(app).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def serve():
    """``serve(app) -> ServerThread``: a started server, stopped after the test."""
    yield from _serving()


@pytest.fixture(scope="module")
def serve_module():
    """``serve`` for module-scoped servers (stopped after the module)."""
    yield from _serving()


@pytest.fixture(scope="session")
def http_request():
    """The :func:`http` client: ``http_request(url, method, body) -> (status, json, headers)``."""
    return http


@pytest.fixture
def free_port() -> int:
    """A loopback port for a server started in a subprocess (released just before the child binds it)."""
    s = loopback_socket()
    port = s.getsockname()[1]
    s.close()
    return port

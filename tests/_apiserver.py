"""``genseek serve`` in a subprocess on a free loopback port, for the server, fault and load tests.

``python -m genseek.cli serve`` polled on ``/health``; a fixed port so a killed server can be
restarted where it was, and ``kill()`` for SIGKILL (no graceful shutdown: nothing is flushed).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

START_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m genseek.cli serve --root ROOT --port PORT`` (no API keys: loopback only)."""

    def __init__(self, root: Path, log: Path, port: int | None = None,
                 env: dict[str, str] | None = None):
        self.root, self.log = Path(root), Path(log)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("GENSEEK_API_KEYS")}
        full_env["TOKENIZERS_PARALLELISM"] = "false"
        # creating a collection starts a JVM and loads a model: on a busy 2-core machine that
        # can pass the 30 s default; the tests are not about the timeout
        full_env.setdefault("GENSEEK_REQUEST_TIMEOUT_S", "300")
        full_env.update(env or {})
        self._out = open(self.log, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "genseek.cli", "serve", "--root", str(self.root),
             "--port", str(self.port)], stdout=self._out, stderr=self._out, env=full_env)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                self._out.close()
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n"
                                     f"{self.output()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the server did not start in {START_TIMEOUT}s:\n"
                                     f"{self.output()[-4000:]}")
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> int:
        """SIGKILL: the process dies at once, mid-request, with nothing flushed."""
        return self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._out.closed:
            self._out.close()
        return self.proc.returncode

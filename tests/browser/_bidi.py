"""A minimal WebDriver BiDi client for Debian's Firefox ESR (the W3C protocol Firefox speaks
natively since version 129; no geckodriver).

Playwright 1.65 drives a stock Firefox over BiDi only from Firefox 146 on (it needs
``network.addDataCollector``), and Debian 12 ships Firefox ESR 140, so the Firefox tests use
the protocol directly: ``session.new``, ``browsingContext.navigate``, ``script.evaluate`` and
``input.performActions`` are all they need. Firefox runs headless with a profile of its own
whose preferences turn off every background connection (updates, telemetry, safe browsing,
captive-portal and connectivity checks, remote settings), so it only talks to the test's
server on 127.0.0.1; it is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

QUIET_PREFS: dict[str, Any] = {
    "app.update.disabledForTesting": True, "app.update.auto": False,
    "browser.safebrowsing.malware.enabled": False, "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False, "toolkit.telemetry.server": "",
    "extensions.update.enabled": False, "extensions.getAddons.cache.enabled": False,
    "extensions.blocklist.enabled": False, "services.settings.server": "",
    "browser.region.network.url": "", "geo.provider.network.url": "",
    "media.gmp-manager.updateEnabled": False, "browser.newtabpage.enabled": False,
    "browser.startup.page": 0, "browser.startup.homepage": "about:blank",
    "network.dns.disablePrefetch": True, "network.prefetch-next": False,
    "network.http.speculative-parallel-limit": 0, "network.proxy.type": 0,
    "remote.prefs.recommended": True,
}
"""Firefox preferences: nothing but the pages it is sent to."""


class BidiError(RuntimeError):
    pass


class Firefox:
    """One headless Firefox and one BiDi session on its first tab."""

    def __init__(self, binary: Path, profile: Path, timeout: float = 60):
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "user.js").write_text("".join(
            f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in QUIET_PREFS.items()))
        self.log = profile.parent / f"{profile.name}.log"
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [str(binary), "--headless", "--no-remote", "--profile", str(profile),
             "--remote-debugging-port=0", "about:blank"],
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        self._next = 0
        try:
            url = self._endpoint(timeout)
            self._connection = connect(f"{url}/session", open_timeout=timeout, max_size=2**24)
            self.ws = self._connection.__enter__()
            self.call("session.new", {"capabilities": {}})
            tree = self.call("browsingContext.getTree", {})
            self.context = tree["contexts"][0]["context"]
        except BaseException:
            self.close()
            raise

    def _endpoint(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"WebDriver BiDi listening on (ws://[\d.:]+)",
                              self.log.read_text(errors="replace"))
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                raise BidiError(f"firefox exited ({self.proc.returncode}): "
                                f"{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        raise BidiError(f"firefox did not open its BiDi port within {timeout:.0f} s")

    def call(self, method: str, params: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        """Send one command; its result (events in between are dropped)."""
        self._next += 1
        ident = self._next
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BidiError(f"{method}: no answer within {timeout:.0f} s")
            message = json.loads(self.ws.recv(timeout=left))
            if message.get("id") != ident:
                continue
            if message.get("type") == "error":
                raise BidiError(f"{method}: {message.get('error')}: {message.get('message')}")
            return message["result"]

    def goto(self, url: str) -> None:
        self.call("browsingContext.navigate",
                  {"context": self.context, "url": url, "wait": "complete"})

    def js(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (awaited if a promise; a DOM
        node is ``True``)."""
        result = self.call("script.evaluate", {
            "expression": f"(async () => {{ const v = await ({expression}); "
                          "return JSON.stringify(v instanceof Node ? true : v); })()",
            "target": {"context": self.context}, "awaitPromise": True})
        if result.get("type") == "exception":
            raise BidiError(f"{expression}: {result['exceptionDetails'].get('text')}")
        value = result["result"].get("value")
        return None if value is None else json.loads(value)

    def wait(self, expression: str, timeout: float = 30) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise BidiError(f"timed out after {timeout:.0f} s waiting for {expression}")

    def type(self, text: str, enter: bool = True) -> None:
        """Real key presses into the focused element (and Enter)."""
        keys = list(text) + (["\ue007"] if enter else [])
        actions = [a for key in keys for a in ({"type": "keyDown", "value": key},
                                               {"type": "keyUp", "value": key})]
        self.call("input.performActions", {"context": self.context, "actions": [
            {"type": "key", "id": "keyboard", "actions": actions}]})

    def close(self) -> None:
        """End the session, then stop Firefox by its PID (SIGKILL after 10 s)."""
        ws = getattr(self, "ws", None)
        if ws is not None:
            with contextlib.suppress(Exception):
                self.call("session.end", {}, timeout=5)
            with contextlib.suppress(Exception):
                self._connection.__exit__(None, None, None)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()


@contextlib.contextmanager
def firefox(binary: Path, profile: Path) -> Iterator[Firefox]:
    browser = Firefox(binary, profile)
    try:
        yield browser
    finally:
        browser.close()

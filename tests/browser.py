"""A headless Chromium driven over the Chrome DevTools Protocol, with ``websocket-client`` (pure Python, small):
no playwright, no chromedriver, no browser download. The browser is the system's (Debian: apt-get install
chromium); ``find_chromium()`` is None where there is none, and the tests that need it skip.

The browser is kept off the network: no name resolves but the loopback, everything else goes to a closed local
proxy port, and background services (updates, sync, pings) are off; ``Browser.requested`` lists every URL the
page asked for, so a test can assert that it fetched nothing from elsewhere.
"""

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",  # as root in CI containers
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-breakpad",
    "--no-pings",
    "--disable-quic",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1;localhost",
    "--remote-debugging-port=0",
    "--hide-scrollbars",
]


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """One headless Chromium with one page: ``goto``, ``js``, ``wait_for``, ``screenshot``; ``close`` ends it."""

    def __init__(self, width: int = 1400, height: int = 1000, timeout: float = 60):
        import websocket  # websocket-client

        self.profile = tempfile.mkdtemp(prefix="fm-chromium-")
        executable = find_chromium()
        if executable is None:
            raise RuntimeError("no chromium on PATH")
        command = [executable, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}"]
        self.process = subprocess.Popen([*command, "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.requested: list[str] = []
        self.errors: list[str] = []
        self._ids = itertools.count(1)
        try:
            port_file = Path(self.profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not (port_file.exists() and port_file.read_text().strip()):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("chromium did not start")
                time.sleep(0.05)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as answer:
                page = next(t for t in json.load(answer) if t["type"] == "page")
            self.socket = websocket.create_connection(
                page["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True
            )
            self.call("Page.enable")
            self.call("Network.enable")
            self.call("Runtime.enable")
            metrics = dict(width=width, height=height, deviceScaleFactor=1, mobile=False)
            self.call("Emulation.setDeviceMetricsOverride", **metrics)
        except BaseException:
            self.close()
            raise

    def _event(self, message: dict) -> None:
        method = message.get("method")
        if method == "Network.requestWillBeSent":
            self.requested.append(message["params"]["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            self.errors.append(message["params"]["exceptionDetails"].get("text", "exception"))

    def call(self, method: str, **params) -> dict:
        number = next(self._ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self._event(message)

    def js(self, expression: str):
        """The value of a JavaScript expression (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for {expression}")
            time.sleep(0.2)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        options = {"format": "png"}
        if full_page:
            height = self.js("Math.ceil(document.documentElement.scrollHeight)")
            width = self.js("Math.ceil(document.documentElement.clientWidth)")
            options["clip"] = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
            options["captureBeyondViewport"] = True
        shot = self.call("Page.captureScreenshot", **options)
        Path(path).write_bytes(base64.b64decode(shot["data"]))
        return Path(path)

    def close(self) -> None:
        socket = getattr(self, "socket", None)
        if socket is not None:
            socket.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""A small Chrome DevTools Protocol client (over tornado's websocket client) for the browser
tests (the HTML report's graph panel, Model Explorer under `tracediff view`) and
bench/bench_graph.py: headless Chromium on a private profile, pages opened, scripts evaluated,
real mouse clicks dispatched at an element's centre. No browser-automation dependency."""
import asyncio
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--remote-debugging-port=0", "--remote-allow-origins=*")
# Model Explorer draws with WebGL: in a headless browser without a GPU, in software.
SOFTWARE_WEBGL = ("--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--use-gl=angle",
                  "--ignore-gpu-blocklist")


class Browser:
    """One headless Chromium with one page; ``webgl``: draw WebGL in software (else no GPU at
    all); ``close()`` ends the process it started."""

    def __init__(self, profile, timeout=20.0, webgl=False, window=(1400, 900)):
        from tornado.websocket import websocket_connect

        self.timeout = timeout
        graphics = SOFTWARE_WEBGL if webgl else ("--disable-gpu",)
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, *graphics, "--window-size={},{}".format(*window),
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.loop = asyncio.new_event_loop()
        try:
            port = self._port(Path(profile) / "DevToolsActivePort")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as answer:
                page = next(t for t in json.load(answer) if t["type"] == "page")

            async def connect():   # tornado binds the connection to the running loop
                return await websocket_connect(page["webSocketDebuggerUrl"], max_message_size=1 << 28)

            self.socket = self.loop.run_until_complete(connect())
        except BaseException:
            self.close()
            raise
        self.last_id = 0

    def _port(self, path):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self.process.returncode}")
            time.sleep(0.05)
        raise TimeoutError("chromium did not open its DevTools port")

    def send(self, method, **params):
        self.last_id += 1
        ident = self.last_id

        async def exchange():
            await self.socket.write_message(json.dumps({"id": ident, "method": method, "params": params}))
            while True:
                text = await self.socket.read_message()
                if text is None:
                    raise RuntimeError("chromium closed the DevTools connection")
                message = json.loads(text)
                if message.get("id") == ident:
                    return message

        message = self.loop.run_until_complete(asyncio.wait_for(exchange(), self.timeout))
        if "error" in message:
            raise RuntimeError(f"{method}: {message['error']}")
        return message["result"]

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, path, ready="document.body && document.body.getAttribute('data-rendered') === 'true'"):
        """Navigate to ``path`` and wait until ``ready`` (a script expression) holds."""
        self.send("Page.navigate", url=Path(path).resolve().as_uri())
        self.wait(ready)

    def wait(self, condition):
        deadline = time.monotonic() + self.timeout
        while not self.evaluate(f"!!({condition})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"never true: {condition}")
            time.sleep(0.02)

    def click(self, selector):
        """A left click (pressed and released) at the centre of the first element matching
        ``selector``, scrolled into view first."""
        x, y = self.evaluate(
            f"(function () {{ var e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center', inline: 'center'});"
            " var r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self):
        socket = getattr(self, "socket", None)
        if socket is not None:
            async def hang_up():
                socket.close()

            self.loop.run_until_complete(hang_up())
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.loop.close()

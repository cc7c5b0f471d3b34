"""A few Chrome DevTools Protocol calls over a websocket (tornado's client): headless Chromium
driven by tests, without a browser-automation dependency."""
from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
import urllib.request

SOFTWARE_WEBGL = ("--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--use-gl=angle",
                  "--ignore-gpu-blocklist")


class Browser:
    """One headless Chromium with one page; ``close()`` ends the process it started."""

    def __init__(self, chromium, profile, width=1400, height=900):
        from tornado.ioloop import IOLoop
        from tornado.websocket import websocket_connect

        self.log = open(f"{profile}.log", "w+")    # a pipe left unread would stall Chromium
        self.process = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", *SOFTWARE_WEBGL,
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--window-size={width},{height}", f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        try:
            endpoint = self._endpoint()
            with urllib.request.urlopen(f"http://127.0.0.1:{endpoint}/json/list", timeout=10) as r:
                targets = json.load(r)
            page = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
            self.loop = IOLoop()
            self.socket = self.loop.run_sync(
                lambda: websocket_connect(page, max_message_size=64 << 20), timeout=10)
        except BaseException:
            self.process.kill()
            self.process.wait()
            self.log.close()
            raise
        self.ids = itertools.count(1)

    def _endpoint(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            self.log.seek(0)
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", self.log.read())
            if found:
                return found.group(1)
            time.sleep(0.1)
        raise AssertionError("Chromium printed no DevTools endpoint")

    def call(self, method, **params) -> dict:
        ident = next(self.ids)

        async def exchange():
            await self.socket.write_message(json.dumps({"id": ident, "method": method,
                                                        "params": params}))
            while True:
                message = json.loads(await self.socket.read_message())
                if message.get("id") == ident:
                    return message.get("result", {})

        return self.loop.run_sync(exchange, timeout=30)

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        return result.get("result", {}).get("value")

    def close(self):
        try:
            self.socket.close()
            self.loop.close()
        finally:
            self.process.kill()
            self.process.wait()
            self.log.close()

"""Open a local page in real headless Chromium, as a person would, and say what it showed.

Debian's `chromium` driven by its `chromedriver` over the W3C WebDriver
protocol (plain HTTP on the loopback interface, so no client library): the
page is loaded, every <img> is checked to be decoded, how far the page runs
past the 1,280 px window is measured, the browser's console log is read (level
SEVERE = errors) and a screenshot is taken. `.ci/run`
installs both packages when they are missing.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,2000",
)


def available() -> bool:
    return Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()


@dataclass
class PageView:
    screenshot: bytes  # PNG of the window
    console_errors: list[str]
    images: int  # <img> elements on the page
    broken_images: int  # of which not decoded
    text: str  # the page's visible text
    overflow_px: int  # how far the page runs past the window's width (0: no horizontal scroll)


def view(page: Path) -> PageView:
    """Load `page` (a file) in a fresh headless Chromium profile and report what it rendered."""
    with tempfile.TemporaryDirectory() as profile:
        port = _free_port()
        driver = subprocess.Popen(
            [CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url)
            options = {"binary": CHROMIUM, "args": [*FLAGS, f"--user-data-dir={profile}"]}
            capabilities = {"goog:chromeOptions": options, "goog:loggingPrefs": {"browser": "ALL"}}
            session = _call(url, "POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
            base = f"/session/{session['sessionId']}"
            try:
                _call(url, "POST", f"{base}/url", {"url": Path(page).resolve().as_uri()})
                images = _script(url, base, "return document.images.length")
                broken = _script(
                    url,
                    base,
                    "return Array.from(document.images)"
                    ".filter(i => !(i.complete && i.naturalWidth > 0)).length",
                )
                text = _script(url, base, "return document.body ? document.body.innerText : ''")
                overflow = _script(
                    url,
                    base,
                    "const e = document.documentElement; return Math.max(e.scrollWidth, "
                    "document.body.scrollWidth) - e.clientWidth",
                )
                shot = base64.b64decode(_call(url, "GET", f"{base}/screenshot"))
                log = _call(url, "POST", f"{base}/se/log", {"type": "browser"})
            finally:
                _call(url, "DELETE", base)
        finally:
            driver.terminate()
            driver.wait(timeout=10)
    errors = [entry["message"] for entry in log if entry.get("level") == "SEVERE"]
    return PageView(shot, errors, images, broken, text, overflow)


def _script(url: str, base: str, script: str) -> Any:
    return _call(url, "POST", f"{base}/execute/sync", {"script": script, "args": []})


def _call(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["value"]


def _wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if _call(url, "GET", "/status")["ready"]:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"chromedriver did not start within {timeout} s")
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

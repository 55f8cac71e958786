"""Headless Chromium for reports: the DOM after the page's scripts ran, its console errors, a screenshot.

Chromium's own command line does it all (``--dump-dom``, ``--screenshot``), so no driver library is
needed. Console errors are caught by a small script put first in a *copy* of the page: it records
``console.error`` calls, uncaught errors and unhandled promise rejections into an attribute of the
``<html>`` element, which ``--dump-dom`` then shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from html import unescape
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ERRORS_ATTR = "data-report-errors"
_CAPTURE = """<script>(function () {
  var errors = [], root = document.documentElement;
  function record(text) { errors.push(String(text)); root.setAttribute(ATTR, JSON.stringify(errors)); }
  root.setAttribute(ATTR, "[]");
  var original = console.error;
  console.error = function () { record(Array.prototype.map.call(arguments, String).join(" "));
                                return original.apply(console, arguments); };
  window.addEventListener("error", function (e) { record("uncaught: " + (e.message || e.type)); }, true);
  window.addEventListener("unhandledrejection", function (e) { record("unhandled rejection: " + e.reason); });
})();</script>""".replace("ATTR", json.dumps(ERRORS_ATTR))


class ChromiumMissing(RuntimeError):
    """No Chromium on this machine (``apt-get install chromium`` on Debian; ``make chromium`` does it)."""


def find() -> str:
    """The Chromium executable ($FACTORY_CHROMIUM, else the first on PATH)."""
    explicit = os.environ.get("FACTORY_CHROMIUM")
    if explicit:
        return explicit
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise ChromiumMissing("no chromium found (install Debian's `chromium` package: `make chromium`)")


def _base_args(window: tuple[int, int]) -> list[str]:
    args = [find(), "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-dev-shm-usage", f"--window-size={window[0]},{window[1]}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox on
    return args


@dataclass
class Rendered:
    dom: str
    errors: list[str]  # console.error calls, uncaught errors, unhandled rejections
    stderr_errors: list[str]  # "Uncaught …" console lines Chromium logged
    seconds: float  # wall time of the whole browser process

    @property
    def ready_ms(self) -> float | None:
        """When the page's own script finished drawing every figure (ms since navigation start)."""
        found = re.search(r'data-ready-ms="([0-9.]+)"', self.dom)
        return float(found.group(1)) if found else None


def render(page: Path, *, wait_ms: int | None = 10_000, window: tuple[int, int] = (1280, 2000),
           timeout_s: float = 120, after_load: str | None = None) -> Rendered:
    """Open ``page`` (a copy with the error-capturing script first) and return the DOM its scripts left.

    ``wait_ms`` lets timers and promises run before the DOM is taken (virtual time: no real wait once
    the page is idle); ``None`` takes the DOM at the load event, for timing. ``after_load`` is JavaScript
    run once the page has loaded (a test clicking through it leaves what it saw in the DOM).
    """
    html = Path(page).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="factory-report-") as tmp:
        copy = Path(tmp) / Path(page).name
        head = re.search(r"<head[^>]*>", html, re.I)
        at = head.end() if head else 0
        tail = f"<script>window.addEventListener('load', () => setTimeout(() => {{ {after_load} }}, 0));</script>" \
            if after_load else ""
        copy.write_text(html[:at] + _CAPTURE + html[at:] + tail, encoding="utf-8")
        args = [*_base_args(window), f"--user-data-dir={tmp}/profile", "--enable-logging=stderr", "--v=0"]
        if wait_ms is not None:
            args.append(f"--virtual-time-budget={wait_ms}")
        began = time.perf_counter()
        proc = subprocess.run([*args, "--dump-dom", copy.as_uri()], capture_output=True, text=True,
                              timeout=timeout_s)
        seconds = time.perf_counter() - began
    if proc.returncode != 0 or "<html" not in proc.stdout:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"chromium exited {proc.returncode} on {page}: {' | '.join(tail)}")
    found = re.search(ERRORS_ATTR + r'="([^"]*)"', proc.stdout)
    if found is None:
        raise RuntimeError(f"the error-capturing script did not run in {page}")
    errors = json.loads(unescape(found.group(1)))
    stderr_errors = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line and "Uncaught" in line]
    return Rendered(proc.stdout, errors, stderr_errors, seconds)


def screenshot(page: Path, png: Path, *, window: tuple[int, int] = (1280, 1800), wait_ms: int = 10_000,
               timeout_s: float = 120) -> Path:
    """A PNG of the top ``window`` of the page once its scripts have drawn."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="factory-report-") as tmp:
        args = [*_base_args(window), f"--user-data-dir={tmp}/profile", f"--virtual-time-budget={wait_ms}",
                f"--screenshot={png}", Path(page).resolve().as_uri()]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium could not take a screenshot of {page}: "
                           f"{' | '.join(proc.stderr.strip().splitlines()[-3:])}")
    return png

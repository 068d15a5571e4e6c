"""Headless Chromium for page tests: load a page, then read its console errors, DOM values and a screenshot.

The browser is driven over the Chrome DevTools protocol on a pipe (`--remote-debugging-pipe`: Chromium
reads NUL-terminated JSON commands on its fd 3 and writes replies and events on its fd 4, Puppeteer's pipe
transport), so the only thing to install is the browser itself (Debian's `chromium`): no driver binary to
keep in step with the browser, no websocket client, no browser download.

    with Chromium() as browser:
        page = browser.load(Path("outputs/demo/report/index.html"))
        check = page.check(Path("/tmp/report.png"))
        assert not check.problems, check.problems  # console errors, unloaded <img>s, a blank screenshot
        counts = page.table("table.counts")  # [[header cells], [row cells], ...] as the page shows them

Tests call `require_chromium()` first: it skips with the install command where no browser is found, and
fails instead under CI (CI=true), where `make test` installs it. By hand:
`python -m tests.browser PAGE [--screenshot PNG]` prints what a test would find wrong with PAGE.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: where to look for the browser: $CHROMIUM first, then these names on PATH (Debian's package is `chromium`)
CHROMIUM_ENV = "CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = (
    "as root: apt-get install -y --no-install-recommends chromium (make test does this where it can), "
    f"or set {CHROMIUM_ENV}=/path/to/chromium"
)

# --no-sandbox: Chromium's sandbox refuses to start as root and needs user namespaces that containers
# often lack; the pages loaded here are our own files. The rest keeps a test run quiet and offline.
FLAGS = (
    "--headless",
    "--remote-debugging-pipe",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
    "--force-color-profile=srgb",
)

#: the tallest full-page screenshot taken (CSS pixels); longer pages are cut there
MAX_SCREENSHOT_HEIGHT = 16384

_IMAGES_JS = """Array.from(document.images, (img) => ({
    src: img.getAttribute('src') || '', url: img.currentSrc || img.src, complete: img.complete,
    width: img.naturalWidth, height: img.naturalHeight}))"""

_TABLE_JS = """((selector) => {
    const table = document.querySelector(selector);
    if (!table) return null;
    return Array.from(table.rows, (row) => Array.from(row.cells, (cell) => cell.innerText.trim()));
})(%s)"""

# resolves once the document has loaded, every <img> has loaded or failed and the tasks queued before it
# (timers of 0, late console calls of the load handlers) have run: then the page shows what it will show
_SETTLE_JS = """new Promise((done) => document.readyState === 'complete' ? done()
        : window.addEventListener('load', done))
    .then(() => Promise.all(Array.from(document.images, (i) => i.complete ? null
        : new Promise((done) => { i.addEventListener('load', done); i.addEventListener('error', done); }))))
    .then(() => new Promise((done) => setTimeout(done, 0)))"""


class BrowserError(RuntimeError):
    """Chromium failed to start, died, timed out, or refused a command or a page."""


def find_chromium() -> str | None:
    """The Chromium executable: $CHROMIUM if set (it must exist), else the first of CHROMIUM_NAMES on PATH."""
    explicit = os.environ.get(CHROMIUM_ENV)
    if explicit:
        return shutil.which(explicit)
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


def require_chromium() -> str:
    """The executable for a test; skips it where there is none, but fails it under CI, which must run it."""
    import pytest

    path = find_chromium()
    if path is None:
        why = f"no headless Chromium ({INSTALL_HINT})"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{why}: CI must run the browser tests")
        pytest.skip(f"{why}: browser check skipped")
    return path


def ink_fraction(image: np.ndarray, tolerance: int = 16) -> float:
    """Share of the pixels that differ from the image's most common colour by more than `tolerance` in some
    channel: 0 for a blank (one-colour) screenshot, e.g. 0.25 when a quarter of it is drawn on."""
    pixels = np.asarray(image, dtype=np.uint8).reshape(-1, np.shape(image)[-1])
    if pixels.shape[0] == 0:
        return 0.0
    # the background from at most ~64k evenly spaced pixels, one integer per colour: np.unique(axis=0)
    # over every pixel of a 1280x3000 page takes seconds; a background is large enough to win any sample
    shifts = 8 * np.arange(pixels.shape[1])
    packed = (pixels[:: max(1, len(pixels) // 65536)].astype(np.int64) << shifts).sum(axis=1)
    colours, counts = np.unique(packed, return_counts=True)
    background = (colours[np.argmax(counts)] >> shifts) & 255
    return float(np.mean(np.any(np.abs(pixels.astype(np.int16) - background) > tolerance, axis=-1)))


@dataclass(frozen=True)
class ImageState:
    """One <img> as the browser has it: `src` as written in the page, `url` resolved; width 0 = not shown."""

    src: str
    url: str
    complete: bool
    width: int
    height: int

    @property
    def loaded(self) -> bool:
        return self.complete and self.width > 0 and self.height > 0


@dataclass
class PageCheck:
    """What a person looks for on a page; `problems` says each in a line (empty when the page is fine)."""

    problems: list[str]
    console_errors: list[str]
    broken_images: list[str]
    ink: float
    screenshot: np.ndarray


class Page:
    """A loaded page (a tab with its own DevTools session). Made by `Chromium.load`."""

    def __init__(self, browser: Chromium, target_id: str, session_id: str, url: str) -> None:
        self._browser, self._target, self._session, self.url = browser, target_id, session_id, url
        self.console_errors: list[str] = []
        self.loaded = False

    def _call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._browser._call(method, params, session=self._session)

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self.loaded = True
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args") or []
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in args)
            self.console_errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails") or {}
            text = (details.get("exception") or {}).get("description") or details.get("text", "")
            self.console_errors.append(f"uncaught: {text.splitlines()[0] if text else '?'}")
        elif method == "Log.entryAdded":
            # the browser's own errors: failed loads ("Failed to load resource: net::ERR_FILE_NOT_FOUND"),
            # blocked requests (CORS); console.* calls come as Runtime events instead
            entry = params.get("entry") or {}
            if entry.get("level") == "error":
                where = f" ({entry['url']})" if entry.get("url") else ""
                self.console_errors.append(
                    f"{entry.get('source', 'browser')}: {entry.get('text', '')}{where}"
                )

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises are awaited)."""
        reply = self._call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = (details.get("exception") or {}).get("description") or details.get("text", "")
            raise BrowserError(f"JavaScript error in {self.url}: {text}")
        return reply.get("result", {}).get("value")

    def images(self) -> list[ImageState]:
        """Every <img> of the page, in document order."""
        return [ImageState(**item) for item in self.evaluate(_IMAGES_JS)]

    def table(self, selector: str) -> list[list[str]]:
        """The cell texts of the first table matching a CSS selector, row by row (header row included)."""
        rows = self.evaluate(_TABLE_JS % json.dumps(selector))
        if rows is None:
            raise BrowserError(f"no element matches {selector!r} in {self.url}")
        return rows

    def screenshot(self, path: Path | None = None, full_page: bool = True) -> np.ndarray:
        """The page as RGB uint8 (H, W, 3) in CSS pixels, the whole page (up to MAX_SCREENSHOT_HEIGHT) or the
        viewport; also written as a PNG to `path` if given."""
        from PIL import Image

        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self._call("Page.getLayoutMetrics")["cssContentSize"]
            width, height = (
                max(1, int(size["width"])),
                min(MAX_SCREENSHOT_HEIGHT, max(1, int(size["height"]))),
            )
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            )
        data = base64.b64decode(self._call("Page.captureScreenshot", params)["data"])
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))

    def check(self, screenshot_path: Path | None = None, min_ink: float = 0.001) -> PageCheck:
        """Console errors, <img>s that did not load (natural width 0: missing, corrupt, blocked) and a blank
        screenshot (less than `min_ink` of it differs from the background; one heading on an 800-pixel-high
        page is 0.2%), each as one line."""
        broken = [img.src or img.url for img in self.images() if not img.loaded]
        shot = self.screenshot(screenshot_path)
        ink = ink_fraction(shot)
        self._browser._drain()  # errors raised while the screenshot was taken count too
        problems = [f"console error: {text}" for text in self.console_errors]
        problems += [f"image not loaded: {src}" for src in broken]
        if ink < min_ink:
            problems.append(
                f"blank screenshot: {ink:.2%} of the pixels differ from the background (< {min_ink:.2%})"
            )
        return PageCheck(problems, list(self.console_errors), broken, ink, shot)

    def close(self) -> None:
        self._browser._close_page(self)


class Chromium:
    """One headless Chromium process with a fresh temporary profile; a context manager that closes it.

    `timeout_s` bounds each command (a page load included), so a hung browser fails the test with Chromium's
    own output instead of hanging it. `extra_flags` go after FLAGS, e.g. `--allow-file-access-from-files`
    for a page that fetch()es its data from beside itself."""

    def __init__(
        self, executable: str | None = None, timeout_s: float = 60.0, extra_flags: tuple[str, ...] = ()
    ) -> None:
        executable = executable or find_chromium()
        if executable is None:
            raise BrowserError(f"no Chromium found ({INSTALL_HINT})")
        self.timeout_s = timeout_s
        self._home = tempfile.mkdtemp(prefix="chromium-")
        self._log_path = Path(self._home) / "chromium.log"
        self._pages: dict[str, Page] = {}
        self._replies: dict[int, dict[str, Any]] = {}
        self._next_id = 0
        self._buffer = b""
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        cmd = [
            executable,
            *FLAGS,
            *extra_flags,
            f"--user-data-dir={Path(self._home) / 'profile'}",
            "about:blank",
        ]
        # HOME points into the temporary folder too: Chromium also writes ~/.pki and ~/.cache
        env = {**os.environ, "HOME": self._home}
        try:
            with open(self._log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    pass_fds=(3, 4),
                    preexec_fn=_pipe_fds(to_child_r, from_child_w),
                )
        except OSError as exc:
            self._cleanup_files()
            raise BrowserError(f"cannot start {executable}: {exc}") from exc
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        try:
            self._call("Browser.getVersion")  # the first reply proves the pipe works
        except BrowserError:
            self.close()
            raise

    # ---------------------------------------------------------------------------------------- protocol

    def _call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        msg_id = self._next_id
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        try:
            os.write(self._to_child, json.dumps(message).encode() + b"\0")
        except OSError as exc:
            raise self._failure(f"{method}: cannot write to Chromium ({exc})") from exc
        deadline = time.monotonic() + self.timeout_s
        while msg_id not in self._replies:
            self._read(deadline, waiting_for=method)
        reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise BrowserError(
                f"{method} failed: {reply['error'].get('message')} {reply['error'].get('data', '')}"
            )
        return reply.get("result", {})

    def _read(self, deadline: float, waiting_for: str) -> None:
        """Read what Chromium has written (blocking until something comes or the deadline) and file it."""
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
            raise self._failure(f"no answer to {waiting_for} within {self.timeout_s:g} s")
        chunk = os.read(self._from_child, 1 << 20)
        if not chunk:
            raise self._failure(f"Chromium closed the pipe while waiting for {waiting_for}")
        self._buffer += chunk
        *messages, self._buffer = self._buffer.split(b"\0")
        for raw in messages:
            message = json.loads(raw)
            if "id" in message:
                self._replies[message["id"]] = message
            elif (page := self._pages.get(message.get("sessionId", ""))) is not None:
                page._event(message.get("method", ""), message.get("params") or {})

    def _drain(self) -> None:
        """File the events already written, without waiting."""
        while select.select([self._from_child], [], [], 0)[0]:
            self._read(time.monotonic() + self.timeout_s, waiting_for="pending events")

    def _failure(self, what: str) -> BrowserError:
        try:
            tail = self._log_path.read_text(errors="replace")[-2000:].strip()
        except OSError:
            tail = ""
        try:  # a closed pipe comes a moment before the exit status
            status = self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            status = None
        state = "running" if status is None else f"exited with {status}"
        return BrowserError(f"{what} (Chromium {state}; its output: {tail or 'none'})")

    # -------------------------------------------------------------------------------------------- pages

    def load(self, url: str | Path, width: int = 1280, height: int = 800) -> Page:
        """Open `url` (a Path is a local file) in a new tab of `width` x `height` CSS pixels and wait until it
        has loaded and every <img> has loaded or failed."""
        if isinstance(url, Path):
            if not url.is_file():
                raise BrowserError(f"no such page: {url}")
            url = url.resolve().as_uri()
        target = self._call("Target.createTarget", {"url": "about:blank"})
        session = self._call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, target["targetId"], session["sessionId"], url)
        self._pages[page._session] = page
        for domain in ("Page", "Runtime", "Log"):
            page._call(f"{domain}.enable")
        page._call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        page.loaded = False  # about:blank's own load event may arrive late
        nav = page._call("Page.navigate", {"url": url})
        if nav.get("errorText"):
            raise BrowserError(f"cannot load {url}: {nav['errorText']}")
        deadline = time.monotonic() + self.timeout_s
        while not page.loaded:
            self._read(deadline, waiting_for=f"the load event of {url}")
        page.evaluate(_SETTLE_JS)
        return page

    def _close_page(self, page: Page) -> None:
        if self._pages.pop(page._session, None) is not None and self._proc.poll() is None:
            self._call("Target.closeTarget", {"targetId": page._target})

    # -------------------------------------------------------------------------------------------- close

    def close(self) -> None:
        """Ask Chromium to quit, kill it if it does not within 10 s, and remove its temporary profile."""
        if self._proc.poll() is None:
            try:
                self._call("Browser.close")
            except BrowserError:
                pass  # it may quit before it answers
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._cleanup_files()

    def _cleanup_files(self) -> None:
        shutil.rmtree(self._home, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pipe_fds(read_fd: int, write_fd: int):
    """A preexec_fn that puts the child's ends of the two pipes on fds 3 (it reads) and 4 (it writes)."""

    def move() -> None:
        # via fresh numbers first: either end may itself be 3 or 4
        r, w = os.dup(read_fd), os.dup(write_fd)
        os.dup2(r, 3)
        os.dup2(w, 4)
        os.close(r)
        os.close(w)

    return move


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.browser",
        description="Load a page in headless Chromium and print what a page test would find wrong with it: "
        "console errors, <img>s that did not load, a blank screenshot. Exit status 1 if anything, 0 if none. "
        "--find only prints the Chromium executable (exit 1 if there is none).",
    )
    parser.add_argument("page", nargs="?", help="an HTML file or a URL")
    parser.add_argument("--screenshot", type=Path, help="write the full-page screenshot here (PNG)")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels (default 1280)")
    parser.add_argument("--find", action="store_true", help="print the Chromium executable and exit")
    args = parser.parse_args(argv)
    path = find_chromium()
    if args.find or args.page is None:
        print(path or f"no Chromium found ({INSTALL_HINT})", file=sys.stdout if path else sys.stderr)
        return 0 if path else 1
    page_arg = Path(args.page) if "://" not in args.page else args.page
    try:
        with Chromium() as browser:
            check = browser.load(page_arg, width=args.width).check(args.screenshot)
    except BrowserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in check.problems:
        print(line)
    height, width = check.screenshot.shape[:2]
    print(f"{len(check.problems)} problem(s); screenshot {width}x{height}, {check.ink:.1%} drawn on")
    return 1 if check.problems else 0


if __name__ == "__main__":
    sys.exit(main())

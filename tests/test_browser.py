"""tests/browser.py, the page-test helper: it must find what a person would see is wrong with a page
(console errors, images that did not load, a blank screenshot) and read DOM values exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser import (
    BrowserError,
    Chromium,
    find_chromium,
    ink_fraction,
    main,
    require_chromium,
)


def _page(folder: Path, name: str, body: str, head: str = "") -> Path:
    # margin 0 and a white background so drawn areas have known sizes in the screenshot
    path = folder / name
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{name}</title>"
        f"<style>body {{ margin: 0; background: #fff; }}</style>{head}</head><body>{body}</body></html>"
    )
    return path


@pytest.fixture(scope="module")
def browser():
    with Chromium(require_chromium()) as chromium:
        yield chromium


# ------------------------------------------------------------------------------------------ no browser


def test_ink_fraction_known_answers():
    white = np.full((10, 20, 3), 255, np.uint8)
    assert ink_fraction(white) == 0.0
    img = white.copy()
    img[2:4, 5:8] = (200, 0, 0)  # 6 of 200 pixels
    assert ink_fraction(img) == pytest.approx(6 / 200)
    img[0, 0] = (250, 250, 245)  # antialiasing-level noise is not ink
    assert ink_fraction(img) == pytest.approx(6 / 200)
    # the background is the commonest colour, whatever it is: a dark page with a light block
    dark = np.zeros((4, 4, 3), np.uint8)
    dark[0] = 255
    assert ink_fraction(dark) == pytest.approx(4 / 16)


def test_require_chromium_skips_but_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CHROMIUM", "/nonexistent/chromium")
    assert find_chromium() is None
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y --no-install-recommends chromium"):
        require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser tests"):
        require_chromium()
    assert main(["--find"]) == 1


def test_chromium_that_does_not_start_is_a_clear_error(tmp_path):
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\necho 'cannot open display' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(BrowserError, match=r"Chromium exited with 3.*cannot open display"):
        Chromium(str(fake), timeout_s=20)


# ------------------------------------------------------------------------------------------- browser


def test_clean_page_has_no_problems_and_exact_dom_values(browser, tmp_path):
    Image.fromarray(np.full((23, 37, 3), (10, 120, 200), np.uint8)).save(tmp_path / "ok.png")
    page = browser.load(
        _page(
            tmp_path,
            "clean.html",
            "<div style='width:50px;height:40px;background:#c00'></div>"
            "<table class='t'><tr><th>status</th><th>n</th></tr>"
            "<tr><td>rendered</td><td> 3 </td></tr></table>"
            "<img src='ok.png'><script>console.log('fine'); console.warn('also fine');"
            # an image that the load handler adds counts too
            "addEventListener('load', () => { const i = new Image(); i.src = 'ok.png?late';"
            "i.style.display = 'block'; document.body.append(i); });</script>",
        ),
        width=400,
        height=300,
    )
    check = page.check(tmp_path / "shot.png")
    assert check.problems == []
    assert [(i.src, i.width, i.height, i.loaded) for i in page.images()] == [
        ("ok.png", 37, 23, True),
        ("ok.png?late", 37, 23, True),
    ]
    assert page.table("table.t") == [["status", "n"], ["rendered", "3"]]
    assert page.evaluate("document.title") == "clean.html"
    assert check.screenshot.shape == (300, 400, 3)
    assert Image.open(tmp_path / "shot.png").size == (400, 300)
    # the red block is exactly where the page puts it
    assert np.all(np.abs(check.screenshot[0:40, 0:50].astype(int) - (0xCC, 0, 0)) <= 2)
    page.close()


def test_broken_images_are_problems(browser, tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "good.png")
    # a file that exists and is served, but is not a PNG: only the natural width shows it did not load
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    page = browser.load(
        _page(
            tmp_path,
            "broken.html",
            "<p>text</p><img src='good.png'><img src='missing.png'><img src='corrupt.png'>",
        )
    )
    check = page.check()
    assert check.broken_images == ["missing.png", "corrupt.png"]
    assert "image not loaded: missing.png" in check.problems
    assert "image not loaded: corrupt.png" in check.problems
    assert any("ERR_FILE_NOT_FOUND" in p and "missing.png" in p for p in check.problems)
    page.close()


def test_console_errors_are_problems(browser, tmp_path):
    page = browser.load(
        _page(
            tmp_path,
            "errors.html",
            "<h1>a heading</h1><script>console.error('bad count', 3); console.assert(1 === 2, 'not equal');"
            "window.addEventListener('load', () => setTimeout(() => { throw new Error('late'); }, 0));"
            "Promise.reject(new TypeError('rejected'));</script><script>undefinedFunction();</script>",
        )
    )
    check = page.check()
    text = "\n".join(check.console_errors)
    assert len(check.console_errors) == 5, text
    assert "console.error: bad count 3" in text and "console.assert: not equal" in text
    assert "Error: late" in text and "TypeError: rejected" in text
    assert "ReferenceError: undefinedFunction is not defined" in text
    assert check.broken_images == [] and check.ink > 0
    assert len(check.problems) == 5
    page.close()


def test_blank_page_is_a_problem(browser, tmp_path):
    page = browser.load(_page(tmp_path, "blank.html", ""))
    check = page.check()
    assert check.ink == 0.0
    assert check.problems == ["blank screenshot: 0.00% of the pixels differ from the background (< 0.10%)"]
    page.close()


def test_full_page_screenshot_and_page_errors(browser, tmp_path):
    page = browser.load(
        _page(tmp_path, "tall.html", "<div style='height:2500px;background:#00f;width:10px'></div>"),
        width=300,
        height=200,
    )
    shot = page.screenshot()
    assert shot.shape == (2500, 300, 3)  # the whole page, not the 200-pixel viewport
    assert np.all(shot[2400:2500, :10] == (0, 0, 255))
    with pytest.raises(BrowserError, match="ReferenceError"):
        page.evaluate("noSuchName + 1")
    with pytest.raises(BrowserError, match="no element matches"):
        page.table("table.none")
    page.close()
    with pytest.raises(BrowserError, match="no such page"):
        browser.load(tmp_path / "absent.html")
    with pytest.raises(BrowserError, match="ERR_FILE_NOT_FOUND"):
        browser.load((tmp_path / "absent.html").as_uri())


def test_cli_reports_problems(browser, tmp_path, capsys):
    path = _page(tmp_path, "cli.html", "<h1>x</h1><img src='nope.png'>")
    assert main([str(path), "--screenshot", str(tmp_path / "cli.png")]) == 1
    out = capsys.readouterr().out
    assert "image not loaded: nope.png" in out and (tmp_path / "cli.png").is_file()


@pytest.mark.slow  # two browsers of its own
def test_extra_flags_reach_chromium(tmp_path):
    """A page that fetch()es its data from beside itself (as a viewer would) needs a flag on file:// URLs."""
    (tmp_path / "data.json").write_text('{"frames": 21}')
    body = "<p id='n'>?</p><script>window.done = fetch('data.json').then((r) => r.json())"
    body += ".then((d) => { document.getElementById('n').textContent = d.frames; })"
    body += ".catch((e) => console.error(String(e)));</script>"
    page_path = _page(tmp_path, "fetch.html", body)
    shown = "window.done.then(() => document.getElementById('n').textContent)"
    with Chromium(require_chromium()) as plain:
        page = plain.load(page_path)
        assert page.evaluate(shown) == "?"
        assert page.check().console_errors != []  # file:// pages may not read other files by default
    with Chromium(require_chromium(), extra_flags=("--allow-file-access-from-files",)) as allowed:
        page = allowed.load(page_path)
        assert page.evaluate(shown) == "21"
        assert page.check().console_errors == []

"""The dashboard in a real browser: Chromium driven by Playwright, pages opened from file://.

Chromium is Debian's package (``apt-get install chromium``; ``scripts/setup`` installs it where it
may). Without Chromium or Playwright these tests skip with the reason, except under CI (``CI`` set),
where they fail: CI must run them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from tests.dashboard_run import compared_run, read_js

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    override = os.environ.get("SCIRCUITS_CHROMIUM")
    if override:
        return override if Path(override).is_file() else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"CI must run the browser tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[dev]')")
    executable = find_chromium()
    if executable is None:
        unavailable("Chromium is not installed (apt-get install chromium, or set SCIRCUITS_CHROMIUM)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The tiny run's dashboard, its matches linked to a compared permuted copy's dashboard."""
    run, _, _, _ = compared_run(tmp_path_factory)
    return run / "dashboard"


class Watched:
    """A page that records console errors, uncaught exceptions and requests leaving file://."""

    def __init__(self, browser) -> None:
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))
        self.page.on(
            "request",
            lambda r: (
                None if r.url.startswith(("file:", "data:")) else self.problems.append(f"network: {r.url}")
            ),
        )

    def open(self, path: Path) -> None:
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_load_state("load")


@pytest.fixture
def watched(browser):
    w = Watched(browser)
    yield w
    w.page.close()


def column(page, index: int) -> list[str]:
    return page.locator(f"#features tbody tr td:nth-child({index + 1}), #features tbody tr th").evaluate_all(
        "(cells) => cells.map(c => c.textContent)"
    )


def row_ids(page) -> list[int]:
    return [
        int(x) for x in page.locator("#features tbody tr").evaluate_all("rs => rs.map(r => r.dataset.id)")
    ]


def test_index_sorts_and_filters(watched, site):
    data = read_js(site / "data" / "index.js")
    keys = [c["key"] for c in data["columns"]]
    rows = data["rows"]
    watched.open(site / "index.html")
    page = watched.page
    assert row_ids(page) == [r[0] for r in rows][:100]  # the built order: ranked features first

    freq = keys.index("frequency")
    page.get_by_role("button", name="Firing frequency").click()
    expected = [r[0] for r in sorted(rows, key=lambda r: (-r[freq], r[0]))][:100]
    assert row_ids(page) == expected
    assert page.locator("th[data-key=frequency]").get_attribute("aria-sort") == "descending"
    page.get_by_role("button", name="Firing frequency").click()
    assert row_ids(page) == [r[0] for r in sorted(rows, key=lambda r: (r[freq], r[0]))][:100]

    attribution = keys.index("attribution")
    page.get_by_role("button", name="Attribution").click()
    with_attr = sorted((r for r in rows if r[attribution] is not None), key=lambda r: (-r[attribution], r[0]))
    assert row_ids(page)[: len(with_attr)] == [r[0] for r in with_attr]  # missing values sort last

    page.get_by_label("only features ablated one at a time").check()
    exact = keys.index("exact")
    assert sorted(row_ids(page)) == sorted(r[0] for r in rows if r[exact] is not None)
    assert len(row_ids(page)) == 3
    page.get_by_label("only features ablated one at a time").uncheck()

    summary = keys.index("summary")
    token = next(r[summary].split()[0] for r in rows if r[summary])
    page.get_by_label("Search").fill(token)
    shown = row_ids(page)
    matching = [r[0] for r in rows if token.lower() in r[summary].lower() or str(r[0]) == token]
    assert sorted(shown) == sorted(matching[:100]) and 0 < len(shown) < len(rows)
    assert page.locator("#count").text_content().startswith(f"{len(matching)} of {len(rows)}")
    page.get_by_label("Search").fill(str(rows[5][0]))
    assert rows[5][0] in row_ids(page)
    assert watched.problems == []


def test_feature_page_shows_histogram_contexts_and_effects(watched, site):
    data = read_js(site / "data" / "index.js")
    first = data["rows"][0][0]
    watched.open(site / "features" / f"{first}.html")
    page = watched.page
    page.wait_for_selector("#histogram")
    hist = page.locator("#histogram")
    assert hist.get_attribute("role") == "img"
    assert page.locator("#hist-title").text_content().startswith("Activation histogram")
    assert "nonzero activations" in page.locator("#hist-desc").text_content()
    assert page.locator("#histogram rect.bar").count() > 0
    assert page.locator("figure figcaption").count() == 1
    assert page.locator("#top ~ ol.contexts > li").count() > 0
    assert page.locator("section[aria-labelledby=quantiles] ol.contexts > li").count() > 0
    assert "direct path" in page.locator("#logits").text_content()
    assert page.locator("section[aria-labelledby=effects] table caption").count() == 1
    matches = page.locator("section[aria-labelledby=matches]")
    assert matches.locator("h2").text_content() == "Matched features in compared runs"
    (match,) = read_js(site / "data" / "matches" / f"{first}.js")
    link = matches.get_by_role("link", name=f"Feature {match['feature']}")
    assert Path(unquote(urlparse(link.evaluate("a => a.href")).path)).name == f"{match['feature']}.html"
    row = link.locator("xpath=ancestor::tr")
    assert "one-to-one, max-correlation" in row.text_content()
    figures = matches.locator("table.figures tbody tr")
    assert figures.count() == 4 and figures.nth(1).locator("th").text_content().startswith("ceiling")

    shaded = page.locator(".tok.on")
    assert shaded.count() > 0
    token = shaded.first
    assert token.get_attribute("tabindex") == "0"
    assert token.get_attribute("title").startswith("activation ")
    assert "activation" in token.get_attribute("aria-label")
    token.focus()
    shown = token.evaluate("t => getComputedStyle(t, '::after').content")
    assert shown.strip('"') == token.get_attribute("data-act")  # the value shows on keyboard focus
    for th in page.locator("table th").all():
        assert th.get_attribute("scope") in ("col", "row")
    assert watched.problems == []


def test_every_link_resolves_and_pages_load_cleanly(watched, site):
    """Open the index and every page it links to (and theirs), in the browser, and check each link."""
    run_dir = site.parent
    start = (site / "index.html").resolve()
    queue, seen, checked = [start], {start}, 0
    while queue:
        path = queue.pop()
        watched.open(path)
        if path.parent.name == "features":
            watched.page.wait_for_selector("#histogram")
        hrefs = watched.page.locator("a[href]").evaluate_all("as => as.map(a => a.href)")
        for href in hrefs:
            url = urlparse(href)
            assert url.scheme == "file", f"{path}: link {href} leaves the disk"
            target = Path(unquote(url.path))
            assert target.is_file(), f"{path}: link {href} does not resolve"
            checked += 1
            inside = target.suffix == ".html" and site.resolve() in target.parents
            if inside and target not in seen:
                seen.add(target)
                queue.append(target)
        assert watched.problems == [], f"{path}: {watched.problems}"
    n_pages = len(list((site / "features").glob("*.html")))
    assert len(seen) == n_pages + 1 and checked > n_pages
    report = (run_dir / "report.html").resolve()
    watched.open(report)
    link = watched.page.get_by_role("link", name="Open the feature dashboard")
    assert Path(unquote(urlparse(link.evaluate("a => a.href")).path)) == start
    link.click()
    watched.page.wait_for_selector("#features tbody tr")
    assert watched.problems == []

"""Screenshots of a run's dashboard in real Chromium: the index and the top feature's page.

    python bench/dashboard_screenshots.py RUN_DIR [--out docs/images]

Opens RUN_DIR/dashboard/index.html from disk (file://, no server) with Playwright driving Debian's
chromium, waits for the table, and saves dashboard-index.png and dashboard-feature.png (the page of
the best-ranked feature). Prints the site's size, page count and any console errors.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    site = (args.run_dir / "dashboard").resolve()
    pages = sorted(site.rglob("*.html"))
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    print(f"{site}: {len(pages)} pages, {size / 2**20:.1f} MiB")
    executable = next(
        (
            found
            for name in ("chromium", "chromium-browser", "google-chrome")
            if (found := shutil.which(name))
        ),
        None,
    )
    if executable is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto((site / "index.html").as_uri())
        page.wait_for_selector("table tbody tr")
        page.screenshot(path=str(args.out / "dashboard-index.png"))
        first = page.locator("table tbody tr a").first
        first.click()
        page.wait_for_load_state("load")
        page.wait_for_timeout(500)
        page.screenshot(path=str(args.out / "dashboard-feature.png"), full_page=False)
        print("feature page:", page.url)
        browser.close()
    print("console errors:", errors or "none")


if __name__ == "__main__":
    main()

"""The site's stylesheet and scripts (plain CSS and JavaScript, no library, nothing fetched): packaged
files in ``dashboard/static/``, copied into every site's ``assets/``."""

from scircuits.platform.common.pages import packaged_text


def _read(name: str) -> str:
    return packaged_text("scircuits.platform.dashboard", "static", name)


CSS = _read("dashboard.css")
COMMON_JS = _read("common.js")
INDEX_JS = _read("index.js")
FEATURE_JS = _read("feature.js")

"""The site's stylesheet and scripts (plain CSS and JavaScript, no library, nothing fetched): packaged
files in ``dashboard/static/``, copied into every site's ``assets/``."""

from importlib.resources import files

STATIC = files("scircuits.platform.dashboard") / "static"


def _read(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


CSS = _read("dashboard.css")
COMMON_JS = _read("common.js")
INDEX_JS = _read("index.js")
FEATURE_JS = _read("feature.js")

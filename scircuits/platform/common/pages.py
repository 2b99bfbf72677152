"""HTML pages from packaged jinja2 templates, and markdown rendered to HTML with markdown-it-py.

Templates live in a package's ``templates/`` folder (package data). Autoescaping is on for every
template: a value from data (a feature label, a prompt, a token) is escaped wherever a template
places it; only text marked ``Markup`` (HTML a template or ``markdown_html`` produced) passes as is.
Markdown is rendered with raw HTML off, so HTML inside data written into markdown shows as text.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markdown_it import MarkdownIt
from markupsafe import Markup

__all__ = ["Markup", "markdown_html", "packaged_text", "render", "render_string"]


@cache
def _environment(package: str | None) -> Environment:
    return Environment(
        loader=PackageLoader(package, "templates") if package is not None else None,
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(package: str, template: str, **values: Any) -> str:
    """The page ``template`` of ``package``'s ``templates/`` folder, filled with ``values``."""
    return _environment(package).get_template(template).render(**values)


def render_string(source: str, **values: Any) -> str:
    """A template given as text (a plugin's own), filled with ``values``, autoescaped the same way."""
    return _environment(None).from_string(source).render(**values)


def packaged_text(package: str, *parts: str) -> str:
    """A packaged text file (a stylesheet, a script) read as it ships."""
    return files(package).joinpath(*parts).read_text(encoding="utf-8")


@cache
def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False}).enable("table")


def markdown_html(text: str) -> Markup:
    """``text`` (CommonMark with tables) as HTML; raw HTML in it is escaped, not passed through."""
    return Markup(_markdown().render(text))

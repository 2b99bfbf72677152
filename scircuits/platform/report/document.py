"""``ReportDocument``: a report written as markdown, block by block, and rendered to one self-contained
HTML page (markdown-it-py for the blocks, the packaged ``templates/report.html`` for the page, the
packaged ``static/report.css`` inlined, figures embedded as base64 PNG); and the formatting and figure
helpers analyses use to write their sections."""

from __future__ import annotations

import base64
import html
import io
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scircuits.files import write_atomic
from scircuits.platform.common.pages import Markup, markdown_html, packaged_text, render, render_string

FIGURES_DIR = "figures"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PACKAGE = "scircuits.platform.report"  # its templates/ and static/ folders


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) < 0.01 or abs(value) >= 10**6):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ci(ci: Sequence[float] | None) -> str:
    return "–" if not ci else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", "\\n") for c in row) + " |" for row in rows
    ]
    return "\n".join(lines)


def show_token(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "⇥")


def pyplot() -> Any:
    import matplotlib

    if "ipykernel" not in sys.modules:  # in a notebook the user's backend (inline) stays
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return buffer.getvalue()


def log_ticks(ax: Any, values: list[int]) -> None:
    """A log x axis labelled with the values themselves (1, 5, 20, ...)."""
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(values, [str(v) for v in values])


class ReportDocument:
    """Builds the report's markdown, block by block, and each block's HTML: the markdown rendered, a
    figure embedded, or the HTML an analysis gives ``raw`` (it escapes what it takes from data).

    Analyses write their sections with ``heading``, ``paragraph``, ``table``, ``figure`` and ``raw``
    (its HTML from ``render_html``, a jinja2 template with every value escaped),
    format with ``fmt`` / ``fmt_ci`` / ``show_token`` / ``escape``, and draw with ``pyplot()``,
    ``png(fig)`` and ``log_ticks``. ``sae_metrics(results)`` and ``training_figure()`` describe the
    run being written (its SAE's training metadata and log).
    """

    fmt = staticmethod(fmt)
    fmt_ci = staticmethod(fmt_ci)
    show_token = staticmethod(show_token)
    escape = staticmethod(html.escape)
    pyplot = staticmethod(pyplot)
    png = staticmethod(png)
    log_ticks = staticmethod(log_ticks)

    def __init__(self, title: str, figures_dir: Path | None, figure_prefix: str = "") -> None:
        self.md: list[str] = [f"# {title}", ""]
        self.html: list[Markup] = []
        self.figures_dir = figures_dir
        self.figure_prefix = figure_prefix
        self.written: list[Path] = []
        self.level = 2
        self._sae_metrics: Callable[[Any], dict[str, Any]] = lambda results: {}
        self._training_figure: Callable[[], bytes | None] = lambda: None

    def describe_run(
        self,
        sae_metrics: Callable[[Any], dict[str, Any]],
        training_figure: Callable[[], bytes | None],
        level: int,
        figure_prefix: str = "",
    ) -> None:
        self._sae_metrics, self._training_figure = sae_metrics, training_figure
        self.level, self.figure_prefix = level, figure_prefix

    def sae_metrics(self, results: Any) -> dict[str, Any]:
        """FVU, L0, dead fraction... of the run's SAE, with the ``source`` they were measured on."""
        return self._sae_metrics(results)

    def training_figure(self) -> bytes | None:
        return self._training_figure()

    def _block(self, md: str, html_text: Markup | None = None) -> None:
        self.md += [md, ""]
        self.html.append(markdown_html(md) if html_text is None else html_text)

    def heading(self, text: str, level: int | None = None) -> None:
        self._block("#" * (self.level if level is None else level) + " " + text)

    def paragraph(self, text: str) -> None:
        """A paragraph of markdown (``**bold**``, links, code spans)."""
        self._block(text)

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self._block(md_table(header, rows))

    def figure(self, name: str, image: bytes | None, caption: str) -> None:
        if image is None:
            return
        file_name = f"{self.figure_prefix}{name}.png"
        if self.figures_dir is not None:
            self.figures_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.figures_dir / file_name, image)
            self.written.append(self.figures_dir / file_name)
        data = base64.b64encode(image).decode()
        self._block(
            f"![{caption}]({FIGURES_DIR}/{file_name})",
            Markup(render(PACKAGE, "figure.html", caption=caption, data=data)),
        )

    @staticmethod
    def render_html(template: str, **values: Any) -> str:
        """HTML for ``raw`` from the jinja2 template text ``template``: every value is escaped where the
        template places it (a token, a prompt), unless the template marks it ``|safe``."""
        return render_string(template, **values)

    def raw(self, md: str, html_text: str) -> None:
        """A block written twice: ``md`` for report.md, ``html_text`` (trusted HTML, its data escaped
        by the caller) for report.html."""
        self._block(md, Markup(html_text))

    def write(self, out: Path, title: str) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / REPORT_MD, "\n".join(self.md))
        css = Markup(packaged_text(PACKAGE, "static", "report.css"))
        page = render(PACKAGE, "report.html", title=title, css=css, blocks=self.html)
        write_atomic(out / REPORT_HTML, page)
        return [out / REPORT_MD, out / REPORT_HTML, *self.written]

"""``ReportDocument``: the markdown and HTML versions of a report, built side by side, and the
formatting and figure helpers analyses use to write their sections."""

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

FIGURES_DIR = "figures"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}\
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f3f3f3}.tok{font-family:monospace;white-space:pre;padding:0 1px}img{max-width:100%}"""


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


def html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
    """Builds the markdown and the HTML versions side by side.

    Analyses write their sections with ``heading``, ``paragraph``, ``table``, ``figure`` and ``raw``,
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
        self.html: list[str] = [f"<h1>{html.escape(title)}</h1>"]
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

    def heading(self, text: str, level: int | None = None) -> None:
        level = self.level if level is None else level
        self.md += ["#" * level + " " + text, ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.md += [md_table(header, rows), ""]
        self.html.append(html_table(header, rows))

    def figure(self, name: str, image: bytes | None, caption: str) -> None:
        if image is None:
            return
        file_name = f"{self.figure_prefix}{name}.png"
        if self.figures_dir is not None:
            self.figures_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.figures_dir / file_name, image)
            self.written.append(self.figures_dir / file_name)
        self.md += [f"![{caption}]({FIGURES_DIR}/{file_name})", ""]
        data = base64.b64encode(image).decode()
        self.html.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def raw(self, md: str, html_text: str) -> None:
        self.md += [md, ""]
        self.html.append(html_text)

    def write(self, out: Path, title: str) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / REPORT_MD, "\n".join(self.md))
        page = (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(self.html)}</body></html>"
        )
        write_atomic(out / REPORT_HTML, page)
        return [out / REPORT_MD, out / REPORT_HTML, *self.written]

"""Pages from packaged jinja2 templates: every value from data is escaped (a prompt, a token, a label
holding ``<script>`` and ``&``), markdown's raw HTML is escaped, and the templates and stylesheets are
read through importlib.resources (the way an installed wheel reads them)."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from scircuits.platform.common.pages import markdown_html, render
from scircuits.platform.dashboard import site
from scircuits.platform.dashboard.circuit_page import CircuitPage, write_circuit_page
from scircuits.platform.report.document import ReportDocument

HOSTILE = "<script>alert('x')</script> & co"
ESCAPED = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co"


def no_script(page: str) -> bool:
    return "<script>alert" not in page and "</script> &" not in page


def test_markdown_escapes_raw_html_and_renders_tables():
    out = markdown_html(f"| prompt | x |\n|---|---|\n| {HOSTILE} | 1 \\| 2 |\n\n**bold** {HOSTILE}")
    assert no_script(out)
    assert "<table>" in out and "<td>1 | 2</td>" in out and "<strong>bold</strong>" in out
    assert "&lt;script&gt;" in out and "&amp; co" in out


def test_a_report_escapes_data_in_every_kind_of_block(tmp_path):
    doc = ReportDocument(f"title {HOSTILE}", tmp_path / "figures")
    doc.heading(f"heading {HOSTILE}")
    doc.paragraph(f"prompt: {HOSTILE}")
    doc.table(["prompt", f"h {HOSTILE}"], [[HOSTILE, "1"]])
    doc.figure("fig", b"\x89PNG not really", f"caption {HOSTILE}")
    doc.raw("md", doc.render_html("<p>{{ token }}</p>", token=HOSTILE))
    doc.write(tmp_path, f"title {HOSTILE}")
    page = (tmp_path / "report.html").read_text()
    assert no_script(page) and "<script" not in page  # the report runs no script at all
    # title (twice), heading, paragraph, header cell, data cell, figure alt and caption, raw block
    assert page.count("&lt;script&gt;") == 9, page
    assert page.count("&amp; co") == 9
    assert (tmp_path / "report.md").read_text().count(HOSTILE) == 6  # markdown holds the text as is
    assert re.search(r"<style>\s*body\{", page)  # the packaged stylesheet, inlined


def test_the_dashboards_pages_escape_labels_and_links(tmp_path):
    index = site.page(
        "index.html",
        f"Features · {HOSTILE}",
        depth=0,
        scripts=["assets/index.js"],
        links=[(f"../{HOSTILE}/report.html", "Run report")],
        run=HOSTILE,
        shown=1,
        n_active=1,
        d_sae=2,
        n_tokens=3,
        n_described=1,
        columns=[{"key": "id", "label": HOSTILE, "numeric": True}],
    )
    feature = site.page("feature.html", HOSTILE, depth=1, scripts=[], feature=3, prev=None, next=4)
    for page in (index, feature):
        assert no_script(page) and ESCAPED in page
    assert index.count(ESCAPED) == 4  # title, run label, column label, report link
    assert '<script src="assets/index.js"></script>' in index
    assert 'href="4.html" rel="next"' in feature and 'rel="prev"' not in feature
    link = render(site.PACKAGE, "report_link.html", marker=site.MARKER, href=f'x"{HOSTILE}')
    assert no_script(link) and 'href="x&#34;&lt;script&gt;' in link
    (tmp_path / "assets").mkdir()
    (tmp_path / "data").mkdir()
    page = CircuitPage(Path(HOSTILE), HOSTILE, HOSTILE, HOSTILE, {"nodes": []})
    write_circuit_page(tmp_path, page, HOSTILE, site.js_assign)
    circuit = (tmp_path / "circuit.html").read_text()
    assert no_script(circuit) and circuit.count(ESCAPED) == 5  # title, link, summary, note, source
    assert '<script src="assets/vendor/cytoscape.min.js"></script>' in circuit


def test_templates_and_stylesheets_ship_as_package_data():
    report = ("templates/report.html", "templates/figure.html", "static/report.css")
    dashboard = [f"templates/{n}.html" for n in ("base", "index", "feature", "circuit", "report_link")]
    for package, names in (
        ("scircuits.platform.report", report),
        ("scircuits.platform.dashboard", dashboard),
        ("scircuits.plugins.analyses", ("templates/feature.html",)),
    ):
        for name in names:
            assert files(package).joinpath(name).is_file(), f"{package}: {name}"

"""Write the static site: index.html, features/<id>.html, data/*.js, assets/*; and the report's link.

The match data (data/comparisons.js, data/matches/) is written empty here and filled by ``matches``.

Data files are JavaScript that assigns to a global (``window.SC_INDEX``, ``window.SC_FEATURE``,
``window.SC_EXAMPLES``) so that pages opened from ``file://`` load them with a <script> tag (Chromium
blocks fetch() of local files). A feature page loads only its own data file and the example shards
its contexts need.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scircuits.files import write_atomic
from scircuits.platform.common.artifacts import publish_into
from scircuits.platform.common.pages import render
from scircuits.platform.common.provenance import base_provenance
from scircuits.platform.dashboard.assets import COMMON_JS, CSS, FEATURE_JS, INDEX_JS
from scircuits.platform.dashboard.circuit_page import PAGE as CIRCUIT_PAGE
from scircuits.platform.dashboard.circuit_page import drop_stale_page, write_circuit_page
from scircuits.platform.dashboard.neuronpedia import write_neuronpedia
from scircuits.platform.dashboard.rows import index_rows
from scircuits.platform.dashboard.scan import ScanSettings

if TYPE_CHECKING:
    from scircuits.platform.dashboard.build import Extracted

PACKAGE = "scircuits.platform.dashboard"  # its templates/ and static/ folders
SHARD_SIZE = 64  # sequences per example shard
MARKER = "scircuits-dashboard-link"

COLUMNS = [
    {"key": "id", "label": "Feature", "numeric": True},
    {"key": "rank", "label": "Rank", "numeric": True},
    {"key": "attribution", "label": "Attribution", "numeric": True},
    {"key": "exact", "label": "Exact Δ log-prob", "numeric": True},
    {"key": "interval", "label": "95% interval", "numeric": False},
    {"key": "frequency", "label": "Firing frequency", "numeric": True},
    {"key": "max", "label": "Max activation", "numeric": True},
    {"key": "summary", "label": "Top tokens", "numeric": False},
]


def js_literal(value: Any) -> str:
    """JSON as a JavaScript literal that is safe inside a <script> element."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/")


def js_assign(target: str, value: Any) -> str:
    return f"{target}={js_literal(value)};\n"


def page(template: str, title: str, *, depth: int, scripts: list[str], **values: Any) -> str:
    """A page of the site from ``templates/<template>`` (``base.html``: the stylesheet, then the
    scripts, all relative to a page ``depth`` folders below the site's root)."""
    return render(PACKAGE, template, title=title, up="../" * depth, scripts=scripts, **values)


def run_label(extracted: Extracted) -> str:
    results = extracted.inputs.results
    config = extracted.inputs.config
    return (
        f"{config.get('model')} · {config.get('benchmark')} · layer {results['layer']} {results['site']} · "
        f"{extracted.d_sae} latents"
    )


def meta(extracted: Extracted) -> dict[str, Any]:
    results, config = extracted.inputs.results, extracted.inputs.config
    settings = ScanSettings()
    stats = results.get("statistics") or {}
    store_split = ((results.get("provenance") or {}).get("store") or {}).get("split", "?")
    return {
        "run": run_label(extracted),
        "layer": results["layer"],
        "benchmark": f"{config.get('benchmark')} ({results.get('n_examples')} examples)",
        "ablation": config.get("ablation"),
        "exact_top": config.get("exact_top"),
        "n_described": len(results.get("features", [])),
        "rank_order": (results.get("rank") or {}).get("order", ""),
        "interval": f"paired bootstrap over examples, {stats.get('bootstrap_replicates', '?')} replicates",
        "tokens_note": (
            f"{extracted.n_tokens} store tokens at positions ≥ {extracted.inputs.first_position} "
            f"(the {store_split} split the store was collected on)"
        ),
        "reservoir": settings.reservoir,
        "n_quantiles": settings.n_quantiles,
        "shard_size": SHARD_SIZE,
    }


def index_values(extracted: Extracted, report_href: str | None) -> dict[str, Any]:
    links = [(report_href, "Run report")] if report_href else []
    links += [(CIRCUIT_PAGE, "Circuit graph")] if extracted.circuit is not None else []
    return {
        "links": links,
        "run": run_label(extracted),
        "shown": len(extracted.pages),
        "n_active": extracted.n_active,
        "d_sae": extracted.d_sae,
        "n_tokens": extracted.n_tokens,
        "n_described": len(extracted.inputs.results.get("features", [])),
        "columns": COLUMNS,
    }


def index_data(extracted: Extracted) -> dict[str, Any]:
    rows = []
    for row in index_rows(extracted.pages, extracted.examples):
        rows.append(
            [
                row.id,
                row.rank,
                row.attribution,
                row.exact_logprob_delta,
                row.exact_logprob_ci,
                row.frequency,
                row.max_activation,
                row.summary,
            ]
        )
    return {"columns": COLUMNS, "rows": rows}


def relative_report(target: Path, run_dir: Path) -> str | None:
    report = run_dir / "report.html"
    if not report.is_file():
        return None
    return Path(os.path.relpath(report.resolve(), target.resolve())).as_posix()


def write_site(target: Path, extracted: Extracted) -> None:
    """(Re)write the site in ``target`` (claimed and locked by the caller): written under
    ``target/.site.tmp-PID``, then moved in entry by entry, index.html last; the entries of an earlier
    site are replaced, nothing else in ``target`` is touched."""
    tmp = target / f".site.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    for sub in ("assets", "data/features", "data/examples", "features"):
        (tmp / sub).mkdir(parents=True)
    (tmp / "assets" / "dashboard.css").write_text(CSS)
    (tmp / "assets" / "common.js").write_text(COMMON_JS)
    (tmp / "assets" / "index.js").write_text(INDEX_JS)
    (tmp / "assets" / "feature.js").write_text(FEATURE_JS)
    (tmp / "data" / "meta.js").write_text(js_assign("window.SC_META", meta(extracted)))
    (tmp / "data" / "index.js").write_text(js_assign("window.SC_INDEX", index_data(extracted)))
    (tmp / "data" / "comparisons.js").write_text(js_assign("window.SC_COMPARISONS", []))
    shards: dict[int, dict[str, list[str]]] = {}
    for run, tokens in extracted.examples.items():
        shards.setdefault(run // SHARD_SIZE, {})[str(run)] = tokens
    for shard, content in shards.items():
        (tmp / "data" / "examples" / f"{shard}.js").write_text(
            f"Object.assign(window.SC_EXAMPLES=window.SC_EXAMPLES||{{}},{js_literal(content)});\n"
        )
    ids = [p.id for p in extracted.pages]
    for i, feature_page in enumerate(extracted.pages):
        fid = feature_page.id
        (tmp / "data" / "features" / f"{fid}.js").write_text(
            js_assign("window.SC_FEATURE", feature_page.model_dump(mode="json"))
        )
        neighbours = (ids[i - 1] if i > 0 else None, ids[i + 1] if i + 1 < len(ids) else None)
        (tmp / "features" / f"{fid}.html").write_text(
            page(
                "feature.html",
                f"Feature {fid} · {run_label(extracted)}",
                depth=1,
                scripts=[
                    "assets/common.js",
                    "data/meta.js",
                    "data/comparisons.js",
                    f"data/features/{fid}.js",
                    "assets/feature.js",
                ],
                feature=fid,
                prev=neighbours[0],
                next=neighbours[1],
            )
        )
    report_href = relative_report(target, extracted.inputs.run_dir)
    (tmp / "index.html").write_text(
        page(
            "index.html",
            f"Features · {run_label(extracted)}",
            depth=0,
            scripts=["assets/common.js", "data/index.js", "assets/index.js"],
            **index_values(extracted, report_href),
        )
    )
    (tmp / "manifest.json").write_text(
        json.dumps(
            {
                "format": "scircuits.dashboard",
                "format_version": 1,
                "run_dir": str(extracted.inputs.run_dir),
                "results_config_hash": extracted.inputs.results.get("config_hash"),
                "sae_sha256": ((extracted.inputs.results.get("provenance") or {}).get("sae") or {}).get(
                    "weights_sha256"
                ),
                "store": str(extracted.inputs.store_path),
                "d_sae": extracted.d_sae,
                "active_features": extracted.n_active,
                "pages": len(extracted.pages),
                "tokens_scanned": extracted.n_tokens,
                "first_position": extracted.inputs.first_position,
                "circuit": str(extracted.circuit.folder) if extracted.circuit is not None else None,
                **base_provenance(),
            },
            indent=2,
        )
    )
    write_neuronpedia(tmp / "neuronpedia", extracted)
    if extracted.circuit is not None:
        write_circuit_page(tmp, extracted.circuit, report_href, js_assign)
    publish_into(tmp, target, last="index.html")
    if extracted.circuit is None:
        drop_stale_page(target)


def link_from_report(run_dir: Path, target: Path) -> None:
    """Add a link to the dashboard to the run's report.md and report.html (once)."""
    href = Path(os.path.relpath((target / "index.html").resolve(), run_dir.resolve())).as_posix()
    md = run_dir / "report.md"
    if md.is_file() and MARKER not in (text := md.read_text()):
        write_atomic(
            md,
            text.rstrip("\n") + f"\n\n<!-- {MARKER} -->\n## Feature dashboard\n\n"
            f"[Open the feature dashboard]({href}): one page per active feature, opens from disk.\n",
        )
    page_html = run_dir / "report.html"
    if page_html.is_file() and MARKER not in (text := page_html.read_text()):
        block = render(PACKAGE, "report_link.html", marker=MARKER, href=href)
        at = text.rfind("</body>")
        write_atomic(page_html, text[:at] + block + text[at:] if at >= 0 else text + block)

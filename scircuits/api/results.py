"""The typed results the API returns, and reads back from a finished run.

Each is a pydantic model whose JSON (``model_dump(mode="json")``) is what ``--json`` prints. In a
notebook each shows as a short HTML table (``_repr_html_``) and a one-line ``repr``; the tables a
result holds come out as lists of dicts (``table``) or as pandas DataFrames (``to_pandas``, where
pandas is installed).
"""

from __future__ import annotations

import html
import json
import numbers
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from scircuits.api.arguments import given, plugin_set
from scircuits.api.jsonl import read_log
from scircuits.platform.compare.schema import CompareResults, Comparison
from scircuits.platform.contract.analyses import Analysis, AnalysisResult
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.study import StudyResults


def to_pandas(rows: list[dict[str, Any]]) -> Any:
    """``rows`` as a DataFrame (nested dicts flattened to ``a.b`` columns)."""
    try:
        import pandas
    except ImportError:
        raise ConfigError(
            "to_pandas needs pandas, which is not installed: pip install pandas (or use .table())"
        ) from None
    return pandas.json_normalize(rows)


def html_table(title: str, rows: list[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
        f"{html.escape(_short(v))}</td></tr>"
        for k, v in rows
    )
    return f"<div><b>{html.escape(title)}</b><table>{cells}</table></div>"


def _short(value: Any, width: int = 120) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def feature_number(feature_id: Any) -> int:
    """A feature id as an int (a numpy integer too); ConfigError for a str, a float, a bool."""
    if isinstance(feature_id, bool) or not isinstance(feature_id, numbers.Integral):
        raise ConfigError(f"feature id must be an int (got {given(feature_id)})")
    return int(feature_id)


class Result(BaseModel):
    """Common behaviour: a concise repr of the headline fields, and the same as an HTML table."""

    model_config = ConfigDict(extra="forbid")

    def headline(self) -> list[tuple[str, Any]]:
        return [(k, v) for k, v in self.model_dump(mode="python").items() if not isinstance(v, (dict, list))]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={_short(v, 60)}" for k, v in self.headline())
        return f"{type(self).__name__}({fields})"

    __str__ = __repr__

    def _repr_html_(self) -> str:
        return html_table(type(self).__name__, self.headline())


class CollectResult(Result):
    """An activation store (or a collection of several): what is in it, and what this call traced."""

    path: str
    n_examples: int
    n_tokens: int
    new_examples: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    already_complete: bool = False  # this call found it complete and traced nothing
    complete: bool = True
    attrs: dict[str, Any] = {}

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


class TrainResult(Result):
    """A trained SAE checkpoint: its variant, sizes and final metrics (the checkpoint's scircuits.json)."""

    path: str
    variant: str
    hparams: dict[str, Any] = {}
    d_in: int
    d_sae: int
    config_hash: str | None = None
    steps: int | None = None
    tokens: int | None = None
    seconds: float | None = None
    metrics: dict[str, Any] = {}

    def headline(self) -> list[tuple[str, Any]]:
        rows = [(k, v) for k, v in super().headline()]
        rows += [(k, self.metrics[k]) for k in ("fvu", "l0", "dead_fraction") if k in self.metrics]
        return rows

    def log(self) -> list[dict[str, Any]]:
        """The training log (train_log.jsonl): one dict per logged step and evaluation."""
        path = Path(self.path) / "train_log.jsonl"
        if not path.is_file():
            return []
        return read_log(path)

    def to_pandas(self) -> Any:
        """The training log as a DataFrame (``eval.*`` columns for the evaluations)."""
        return to_pandas(self.log())


class FeatureView(Result):
    """One feature of a study: its row of the ``features`` table (rank, attribution, exact-ablation
    effect, top-activating contexts) and its dashboard page where one was built."""

    model_config = ConfigDict(extra="allow")

    id: int
    rank: int | None = None
    page: str | None = None

    def contexts(self) -> list[str]:
        """The top-activating contexts as text, the activating token in [brackets]."""
        out = []
        for top in (self.model_extra or {}).get("top_tokens") or []:
            tokens = [t[0] for t in top.get("context", [])]
            focus = top.get("focus")
            if isinstance(focus, int) and 0 <= focus < len(tokens):
                tokens[focus] = f"[{tokens[focus]}]"
            out.append("".join(tokens))
        return out

    def headline(self) -> list[tuple[str, Any]]:
        skip = {"top_tokens"}
        return [(k, v) for k, v in super().headline() if k not in skip] + [
            (f"context {i + 1}", c.replace("\n", "⏎")) for i, c in enumerate(self.contexts()[:5])
        ]

    def _repr_html_(self) -> str:
        table = html_table(f"feature {self.id}", self.headline())
        if self.page:
            table += f"<a href='{html.escape(Path(self.page).as_uri())}' target='_blank'>dashboard page</a>"
        return table


class AblateResult(StudyResults):
    """The causal study: results.json's fields (``StudyResults``: the study-level fields and every
    analysis's result fields, e.g. ``.sweeps``, ``.features``, ``.faithfulness``), and where it is."""

    path: str | None = None

    def tables(self) -> list[str]:
        """The names of the fields that are tables (lists of records), e.g. sweeps, features."""
        data = self.model_dump(mode="python")
        return [
            k for k, v in data.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)
        ]

    def table(self, name: str) -> list[dict[str, Any]]:
        """The table ``name`` as a list of dicts; ConfigError naming the tables there are."""
        value = self.model_dump(mode="python").get(name)
        if name not in self.tables():
            raise ConfigError(
                f"this study has no table {name!r}"
                + (" (it is empty)" if value == [] else "")
                + f"; its tables: {', '.join(self.tables()) or 'none'}"
            )
        return list(value or [])

    def to_pandas(self, name: str = "sweeps") -> Any:
        """The table ``name`` (default: the top-k sweeps against their controls) as a DataFrame."""
        return to_pandas(self.table(name))

    def result_of(self, analysis: Analysis | str, plugins: Any = None) -> AnalysisResult | None:
        """The typed result of ``analysis`` (an ``Analysis``, or its name: ``result_of_name``); None
        when it did not run in this study."""
        if isinstance(analysis, str):
            return self.result_of_name(analysis, plugins)
        if not isinstance(analysis, Analysis):
            raise ConfigError(f"result_of takes an Analysis or an analysis's name, not {given(analysis)}")
        return super().result_of(analysis)

    def result_of_name(self, name: str, plugins: Any = None) -> AnalysisResult | None:
        """The typed result of the analysis ``name`` (its plugin's ``Result`` class), looked up in
        ``plugins`` (default: the installed plugins); None when it did not run in this study."""
        from scircuits.platform.causal.registry import analyses_of

        registered = analyses_of(plugin_set(plugins))
        if not isinstance(name, str) or name not in registered:
            ran = " (this study ran it; no installed plugin registers it)" if name in self.analyses else ""
            known = ", ".join(registered.names()) or "none"
            raise ConfigError(f"unknown analysis {name!r}{ran}; the known analyses: {known}")
        return self.result_of(registered.get(name))

    def feature(self, feature_id: int) -> FeatureView:
        """A feature of the ``features`` table (the ranked ones), with its dashboard page if built."""
        feature_id = feature_number(feature_id)
        for row in self.model_dump(mode="python").get("features") or []:
            if row.get("id") == feature_id:
                return FeatureView(**row, page=self._page(feature_id))
        ranked = [r.get("id") for r in self.model_dump(mode="python").get("features") or []]
        raise ConfigError(
            f"feature {feature_id} is not among the study's ranked features ({_short(ranked, 80)}); "
            "the dashboard (scircuits.dashboard) has a page for every active feature"
        )

    def _page(self, feature_id: int) -> str | None:
        if self.path is None:
            return None
        page = Path(self.path).parent / "dashboard" / "features" / f"{feature_id}.html"
        return str(page) if page.is_file() else None

    def headline(self) -> list[tuple[str, Any]]:
        keys = ("path", "n_examples", "n_tokens", "layer", "site", "d_sae", "active_features", "n_conditions")
        data = self.model_dump(mode="python")
        rows = [(k, data.get(k)) for k in keys]
        baseline = data.get("baseline") or {}
        if isinstance(baseline, dict) and "accuracy" in baseline:
            rows.append(("baseline accuracy", baseline["accuracy"]))
        recon = data.get("reconstruction") or {}
        if isinstance(recon, dict) and "ce_loss_recovered" in recon:
            rows.append(("CE loss recovered", recon["ce_loss_recovered"]))
        for sweep in data.get("sweeps") or []:
            if isinstance(sweep, dict) and "k" in sweep:
                rows.append(
                    (
                        f"top-{sweep['k']} {sweep.get('ablation', '')} Δlogprob",
                        f"{sweep.get('logprob_delta', float('nan')):.4g}"
                        + (" (significant)" if sweep.get("significant_logprob") else ""),
                    )
                )
        rows.append(("tables", ", ".join(self.tables())))
        return rows

    def __repr__(self) -> str:
        return (
            f"AblateResult(path={self.path!r}, n_examples={self.n_examples}, layer={self.layer}, "
            f"site={self.site!r}, d_sae={self.d_sae}, analyses={self.analyses})"
        )

    __str__ = __repr__

    def _repr_html_(self) -> str:
        return html_table("AblateResult", self.headline())


class RunResult(Result):
    """A run directory of `scircuits run`: its store, SAE, study and report."""

    path: str
    collect: CollectResult | None = None
    train: TrainResult | None = None
    study: AblateResult
    report: str | None = None
    dashboard: str | None = None
    stage_seconds: dict[str, float] = {}

    def feature(self, feature_id: int) -> FeatureView:
        """A ranked feature of the study, with its dashboard page if built (``study.feature``)."""
        return self.study.feature(feature_id)

    def to_pandas(self, name: str = "sweeps") -> Any:
        """A table of the study (``study.to_pandas``)."""
        return self.study.to_pandas(name)

    def figures(self) -> list[str]:
        folder = Path(self.path) / "figures"
        return sorted(str(p) for p in folder.glob("*.png")) if folder.is_dir() else []

    def headline(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [("path", self.path)]
        if self.collect is not None:
            rows.append(("store", f"{self.collect.n_examples} examples, {self.collect.n_tokens} tokens"))
        if self.train is not None:
            rows.append(("sae", f"{self.train.variant} d_sae {self.train.d_sae}"))
            rows += [(f"sae {k}", v) for k, v in self.train.headline() if k in ("fvu", "l0")]
        rows += [(k, v) for k, v in self.study.headline() if k != "path"]
        rows += [("report", self.report), ("dashboard", self.dashboard)]
        rows += [(f"{stage} seconds", s) for stage, s in self.stage_seconds.items()]
        return rows

    def __repr__(self) -> str:
        return f"RunResult(path={self.path!r}, study={self.study!r})"

    __str__ = __repr__


def comparison_row(name: str, comparison: Comparison, run_a: int, run_b: int | None) -> dict[str, Any]:
    return {
        "comparison": name,
        "run_a": run_a,
        "run_b": run_b,
        "a": comparison.a,
        "b": comparison.b,
        "kind": comparison.kind,
        "hungarian_mean": comparison.hungarian.mean,
        "max_a_to_b_mean": comparison.max_a_to_b.mean,
        "max_b_to_a_mean": comparison.max_b_to_a.mean,
        "rsa": comparison.geometry.rsa,
        "n_tokens": comparison.n_tokens,
    }


class CompareResult(CompareResults):
    """The comparison of runs: compare's results.json (``CompareResults``) and where it is."""

    path: str | None = None

    def table(self) -> list[dict[str, Any]]:
        """One row per comparison: each run pair (and its floors in the pair's spaces, where the runs
        read different activations), then each run's ceiling and floors. ``run_a``/``run_b`` index
        ``runs`` (``run_b`` is None for a run's own references)."""
        rows = []
        for pair in self.pairs:
            rows.append(comparison_row("pair", pair.comparison, pair.a, pair.b))
            if pair.floors is not None:
                rows += [
                    comparison_row(name, getattr(pair.floors, name), pair.a, pair.b)
                    for name in type(pair.floors).model_fields
                ]
        for index, run in enumerate(self.runs):
            for name in ("ceiling", "floor_untrained", "floor_rotation"):
                comparison = getattr(run.reference, name)
                if comparison is not None:
                    rows.append(comparison_row(name, comparison, index, None))
        return rows

    def to_pandas(self) -> Any:
        """One row per comparison (run pairs, ceilings and floors: ``table``) with its headline numbers."""
        return to_pandas(self.table())

    def __repr__(self) -> str:
        return (
            f"CompareResult(path={self.path!r}, runs={[r.label for r in self.runs]}, pairs={len(self.pairs)})"
        )

    __str__ = __repr__

    def _repr_html_(self) -> str:
        return html_table(
            "CompareResult",
            [
                ("path", self.path),
                ("runs", ", ".join(r.label for r in self.runs)),
                ("pairs", len(self.pairs)),
            ],
        )


class DashboardResult(Result):
    """A written feature dashboard: where its index is, and what it holds. (The fields of the
    dashboard's ``DashboardSummary``, declared here because reading them must not import the
    dashboard's builder, which loads torch.)"""

    path: str
    index: str
    d_sae: int
    n_active: int
    n_pages: int
    n_tokens: int
    seconds: float
    size_bytes: int
    n_files: int
    n_comparisons: int = 0
    circuit: str | None = None  # circuit.html, when the dashboard draws a circuit

    def page(self, feature_id: int) -> str:
        """The page of a feature; ConfigError when the dashboard has none for it."""
        feature_id = feature_number(feature_id)
        page = Path(self.path) / "features" / f"{feature_id}.html"
        if not page.is_file():
            raise ConfigError(
                f"the dashboard in {self.path} has no page for feature {feature_id} (it fires on none of "
                "the scanned tokens, or --features left it out)"
            )
        return str(page)

"""The ``ground-truth`` analysis: on a benchmark whose examples carry per-token variables in ``meta``
(any registered synthetic task through ``SynthTaskBenchmark``), score what the study found against
what is known.

- **Feature recovery**, on every example's labelled tokens (the site's output, as the study traced
  it): per variable value, the best single SAE feature's AUROC and F1; beside it a logistic probe on
  the raw activations (the ceiling, held out), the best raw dimension, and a random-decoder SAE of
  the same width and L0. Shares are over the labels the probe reads (AUROC >= 0.9), with their
  count: a share over labels nobody can read says nothing about the SAE.
- **Causal recovery**: the known causal set is the best feature of each variable value where it is
  aligned (AUROC >= the threshold; 0.9, and 0.75 as a looser bar). The study's own ranking (the
  order its sweeps take features in) is scored against it (precision and recall at k, AUROC) only
  where the set has ``MIN_CAUSAL_SET`` members; a smaller set is named, not scored.
- **Specificity**, from the counterfactuals the task declares (``meta["counterfactuals"]``): for
  each declared variable name, the SAE features best aligned with its values are zero-ablated at
  the variable's position, one declared variable (``name@index``) at a time; the change of the
  answer's log-prob on problems whose answer depends on it (the record's ``depends``) against those
  where it does not, each with a bootstrap interval, and a null edit (nothing ablated) through the
  same path beside it. No task name is consulted.

On any other benchmark the result is ``null``. The floor of an SAE trained on the untrained model
is this same analysis on a run of that model (``bench/synth_recovery.py`` puts them side by side).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from scircuits import (
    AUROC_RECOVERED,
    Analysis,
    AnalysisResult,
    Label,
    Recovery,
    aligned_features,
    feature_recovery,
    probe_recovery,
    random_decoder_features,
    ranking_recovery,
    specificity,
    variable_labels,
)

if TYPE_CHECKING:
    from scircuits import ReportDocument, StudyContext, StudyResults

ALIGNED_AT = (AUROC_RECOVERED, 0.75)
MIN_CAUSAL_SET = 5  # a ranking AUROC over fewer members is one or two ranks, not a measurement
SOURCES = ("sae", "probe", "raw", "random-decoder")


class LabelScore(BaseModel):
    label: str
    n: int
    n_positive: int
    unit: int  # best feature / dimension (-1 for the probe)
    auroc: float
    f1: float
    sign: int = 1


class SourceRecovery(BaseModel):
    source: str
    threshold: float
    share_recovered: float
    mean_auroc: float
    labels: list[LabelScore]

    def by_label(self) -> dict[str, LabelScore]:
        return {r.label: r for r in self.labels}


class RankingScore(BaseModel):
    min_auroc: float
    causal_set: list[int]
    precision_at_k: dict[int, float]
    recall_at_k: dict[int, float]
    auroc: float


class IntervalScore(BaseModel):
    mean: float
    low: float
    high: float
    n: int
    excludes_zero: bool


class SpecificityScore(BaseModel):
    variable: str  # what the edited features are aligned with
    features: list[int]
    feature_auroc: dict[str, float]
    dependent: IntervalScore
    independent: IntervalScore
    difference: IntervalScore
    confidence: float
    specific: bool


class GroundTruth(BaseModel):
    task: str
    examples: int
    labelled_tokens: int
    random_decoder_k: int
    feature_recovery: dict[str, SourceRecovery]  # by source: sae, probe, raw, random-decoder
    readable_labels: list[str]  # the labels the probe reads (held-out AUROC >= 0.9)
    readable_share: dict[str, float | None]  # by source: share of readable_labels at AUROC >= 0.9
    causal_recovery: list[RankingScore]  # one per alignment bar whose causal set is big enough
    causal_recovery_note: str
    specificity: list[SpecificityScore]  # one per declared counterfactual variable name
    null_edit: list[SpecificityScore]  # the same passes with nothing ablated
    specificity_note: str


class GroundTruthResult(AnalysisResult):
    ground_truth: GroundTruth | None


def _has_ground_truth(examples: list[Any]) -> bool:
    return bool(examples) and all(
        isinstance(e.meta, dict) and "variables" in e.meta and "tokens" in e.meta for e in examples
    )


def _source(rec: Recovery) -> SourceRecovery:
    return SourceRecovery.model_validate(rec.to_dict())


class LabelledTokens:
    """The site's output and SAE features at every token that carries a known variable."""

    def __init__(self, context: StudyContext) -> None:
        examples = context.study.data.examples
        raw, feats, variables, owner = [], [], [], []
        for eb in context.study.data.batches:
            real = eb.edit_mask(0).cpu()
            position_ids = eb.batch.position_ids.cpu()
            for example, layout in zip(eb.example_indices, eb.layouts, strict=True):
                meta = examples[example].meta
                for row in layout.sequence_indices:
                    columns = np.flatnonzero(real[row].numpy())
                    if len(columns) != len(meta["tokens"]):
                        raise ValueError(
                            f"{examples[example].id}: the model's tokenizer gives {len(columns)} tokens, "
                            f"the ground truth {len(meta['tokens'])}; the model was not trained on this task"
                        )
                    labelled = [
                        (int(c), p)
                        for c, p in zip(columns, position_ids[row, columns].tolist(), strict=True)
                        if meta["variables"][p]
                    ]
                    if not labelled:
                        continue
                    cols = [c for c, _ in labelled]
                    raw.append(eb.cache.site_output[row, cols].float().cpu().numpy())
                    feats.append(eb.features[row, cols].float().cpu().numpy())
                    variables += [dict(meta["variables"][p]) for _, p in labelled]
                    owner += [example] * len(labelled)
        self.raw = np.concatenate(raw).astype(np.float64)
        self.features = np.concatenate(feats).astype(np.float64)
        self.variables = variables
        self.example = np.array(owner)  # the example of each token (the probe's split groups)


def position_edit(context: StudyContext, features: list[int], where: dict[int, set[int]]) -> Any:
    """Edits zero-ablating ``features`` only at the positions ``where[example]`` of each example."""
    import torch

    idx = torch.as_tensor(features, dtype=torch.long)
    batches = context.study.data.batches

    def edit_for(b: int) -> Any:
        eb = batches[b]
        mask = torch.zeros(eb.features.shape[:2], dtype=torch.bool)
        for example, layout in zip(eb.example_indices, eb.layouts, strict=True):
            wanted = where.get(int(example), set())
            for row in layout.sequence_indices:
                for p in wanted:
                    mask[row] |= eb.batch.position_ids[row].cpu() == p
        mask &= eb.edit_mask(0).cpu()

        def edit(f: torch.Tensor) -> torch.Tensor:
            if not len(idx):
                return f
            out = f.clone()
            out[..., idx] = torch.where(mask.to(f.device)[..., None], 0.0, f[..., idx]).to(f.dtype)
            return out

        return edit

    return edit_for


def _interval(d: dict[str, Any]) -> IntervalScore:
    return IntervalScore(**d)


class GroundTruthAnalysis(Analysis):
    name = "ground-truth"
    description = "Ground truth: recovery of the known variables"
    order = 80
    after = ("baseline", "ranking")
    Result = GroundTruthResult

    def passes(self, context: StudyContext) -> int:
        if not _has_ground_truth(context.study.data.examples):
            return 0
        return 2 * sum(len(v) for v in _declared_counterfactuals(context.study.data.examples).values())

    def run(self, context: StudyContext) -> GroundTruthResult:
        examples = context.study.data.examples
        if not _has_ground_truth(examples):
            return GroundTruthResult(ground_truth=None)
        task = str(examples[0].meta.get("task", ""))
        tokens = LabelledTokens(context)
        labels = variable_labels(tokens.variables, exclude=_index_keys(examples))
        l0 = float((tokens.features > 0).sum(axis=1).mean())
        k = max(1, round(l0))
        sae = feature_recovery(tokens.features, labels, source="sae")
        recoveries = {
            "sae": sae,
            "probe": probe_recovery(tokens.raw, labels, groups=tokens.example, seed=context.seed),
            "raw": feature_recovery(tokens.raw, labels, source="raw", signed=True),
            "random-decoder": feature_recovery(
                random_decoder_features(tokens.raw, context.d_sae, k, seed=context.seed),
                labels,
                source="random-decoder",
            ),
        }
        readable = [r.label for r in recoveries["probe"].labels if r.auroc >= AUROC_RECOVERED]
        causal, note = self._causal(context, sae, labels)
        spec, null, spec_note = self._specificity(context, sae)
        return GroundTruthResult(
            ground_truth=GroundTruth(
                task=task,
                examples=len(examples),
                labelled_tokens=len(tokens.variables),
                random_decoder_k=k,
                feature_recovery={name: _source(rec) for name, rec in recoveries.items()},
                readable_labels=readable,
                readable_share={name: readable_share(rec, readable) for name, rec in recoveries.items()},
                causal_recovery=causal,
                causal_recovery_note=note,
                specificity=spec,
                null_edit=null,
                specificity_note=spec_note,
            )
        )

    @staticmethod
    def _causal(context: StudyContext, sae: Recovery, labels: list[Label]) -> tuple[list[RankingScore], str]:
        ranked = context.shared.get("ranked")
        if ranked is None:
            return [], "the ranking analysis left no order"
        scores = np.zeros(context.d_sae)
        scores[np.asarray(ranked)] = np.arange(len(ranked), 0, -1)
        out: list[RankingScore] = []
        small: list[str] = []
        for bar in ALIGNED_AT:
            causal_set = aligned_features(sae, [label.name for label in labels], min_auroc=bar)
            if len(causal_set) < MIN_CAUSAL_SET:
                small.append(f"{len(causal_set)} at AUROC ≥ {bar:g}")
                continue
            r = ranking_recovery(scores, causal_set)
            out.append(
                RankingScore(
                    min_auroc=bar,
                    causal_set=list(r.causal_set),
                    precision_at_k=r.precision_at_k,
                    recall_at_k=r.recall_at_k,
                    auroc=r.auroc,
                )
            )
        note = "the study's ranking against the best-aligned feature of each variable value"
        if small:
            note += (
                f"; not computed where the causal set has fewer than {MIN_CAUSAL_SET} features "
                f"({', '.join(small)}): a ranking AUROC over so few is one or two ranks"
            )
        return out, note

    @staticmethod
    def _specificity(
        context: StudyContext, sae: Recovery
    ) -> tuple[list[SpecificityScore], list[SpecificityScore], str]:
        examples = context.study.data.examples
        declared = _declared_counterfactuals(examples)
        if not declared:
            return [], [], "the task declares no counterfactuals"
        by_label = sae.by_label()
        evaluation = np.asarray(context.evaluation_indices)
        base = context.scores["splice"].logprob[evaluation]  # recorded over every example
        specs: list[SpecificityScore] = []
        nulls: list[SpecificityScore] = []
        skipped: list[str] = []
        for name, variables in declared.items():
            values = sorted(
                {r["value"] for e in examples for r in e.meta["counterfactuals"] if r["name"] == name}
            )
            found = {
                f"{name}={v}": by_label[f"{name}={v}"]
                for v in values
                if f"{name}={v}" in by_label and by_label[f"{name}={v}"].unit >= 0
            }
            if not found:
                skipped.append(f"{name} (no scored label)")
                continue
            features = sorted({r.unit for r in found.values()})
            for edited, out in ((features, specs), ([], nulls)):
                clean_all, edited_all, depends_all = [], [], []
                for variable in variables:
                    where: dict[int, set[int]] = {}
                    depends = np.zeros(len(examples), dtype=bool)
                    for e, example in enumerate(examples):
                        for record in example.meta["counterfactuals"]:
                            if record["variable"] == variable:
                                where[e] = {int(record["position"])}
                                depends[e] = bool(record["depends"])
                    scores = context.run_condition(
                        "splice",
                        position_edit(context, edited, where),
                        status=f"ground truth {variable}" + ("" if edited else " (null)"),
                    )
                    has = np.array([int(e) in where for e in evaluation], dtype=bool)
                    clean_all.append(base[has])
                    edited_all.append(np.asarray(scores.logprob)[has])
                    depends_all.append(depends[evaluation][has])
                result = specificity(
                    np.concatenate(clean_all),
                    np.concatenate(edited_all),
                    np.concatenate(depends_all),
                    seed=context.seed,
                ).to_dict()
                out.append(
                    SpecificityScore(
                        variable=" / ".join(found),
                        features=list(edited),
                        feature_auroc={w: r.auroc for w, r in found.items()},
                        dependent=_interval(result["dependent"]),
                        independent=_interval(result["independent"]),
                        difference=_interval(result["difference"]),
                        confidence=result["confidence"],
                        specific=result["specific"],
                    )
                )
        note = "from the task's declared counterfactuals (one pass per declared variable)"
        if skipped:
            note += "; not measured: " + ", ".join(skipped)
        return specs, nulls, note

    # -- output -------------------------------------------------------------------------------

    def report(self, section: ReportDocument, result: GroundTruthResult, results: StudyResults) -> None:
        g = result.ground_truth
        if g is None:
            return
        section.heading(self.description)
        section.paragraph(
            f"Task {g.task}: {g.labelled_tokens:,} labelled tokens of {g.examples} examples. Feature "
            f"recovery: per variable value, the best single unit's AUROC. The probe is the ceiling (is "
            f"the variable linearly there at all, held out); it reads {len(g.readable_labels)} of "
            f"{len(g.feature_recovery['sae'].labels)} values at AUROC ≥ {AUROC_RECOVERED:g}, and shares "
            f"are over those. The random-decoder SAE has the same width and L0 ({g.random_decoder_k})."
        )
        recs = g.feature_recovery
        n_readable = len(g.readable_labels)
        section.table(
            ["source", f"share of the {n_readable} probe-readable values at AUROC ≥ 0.9", "mean best AUROC"],
            [
                [
                    name,
                    section.fmt(g.readable_share.get(name)) if n_readable else "n/a",
                    section.fmt(r.mean_auroc),
                ]
                for name, r in recs.items()
            ],
        )
        tables = {name: r.by_label() for name, r in recs.items()}
        rows = []
        for label, r in tables["sae"].items():
            rows.append(
                [label, r.unit, section.fmt(r.auroc), section.fmt(r.f1)]
                + [section.fmt(tables[n][label].auroc) if label in tables[n] else "n/a" for n in SOURCES[1:]]
            )
        section.table(["variable", "SAE feature", "AUROC", "F1", "probe", "raw dim", "random decoder"], rows)
        if g.causal_recovery:
            section.table(
                ["aligned at", "causal set", "P@1", "P@5", "R@5", "R@20", "ranking AUROC"],
                [
                    [
                        f"AUROC ≥ {c.min_auroc:g}",
                        ", ".join(map(str, c.causal_set[:12])) + (" …" if len(c.causal_set) > 12 else ""),
                        section.fmt(c.precision_at_k.get(1)),
                        section.fmt(c.precision_at_k.get(5)),
                        section.fmt(c.recall_at_k.get(5)),
                        section.fmt(c.recall_at_k.get(20)),
                        section.fmt(c.auroc),
                    ]
                    for c in g.causal_recovery
                ],
            )
        section.paragraph(f"Causal recovery: {g.causal_recovery_note}.")
        section.paragraph(f"Specificity: {g.specificity_note}.")
        if g.specificity:
            section.table(
                ["edit", "Δ log-prob, answer depends", "Δ log-prob, does not", "specific"],
                [
                    [
                        f"features {s.features or '∅ (null edit)'} ({s.variable})",
                        _fmt_interval(s.dependent),
                        _fmt_interval(s.independent),
                        str(s.specific),
                    ]
                    for pair in zip(g.specificity, g.null_edit, strict=True)
                    for s in pair
                ],
            )

    def findings(
        self, section: ReportDocument, result: GroundTruthResult, results: StudyResults
    ) -> list[str]:
        g = result.ground_truth
        if g is None:
            return []
        sae, probe = g.feature_recovery["sae"].by_label(), g.feature_recovery["probe"].by_label()
        missed = [
            label
            for label, r in sae.items()
            if r.auroc < AUROC_RECOVERED <= (probe[label].auroc if label in probe else 0.0)
        ]
        n = len(g.readable_labels)
        if not n:
            lines = [
                f"Ground truth: the probe reads none of the {len(sae)} variable values at AUROC ≥ "
                f"{AUROC_RECOVERED:g} at this site, so feature recovery is not measured here."
            ]
        else:
            share = g.readable_share
            lines = [
                f"Ground truth: of the {n} variable values a held-out probe reads at AUROC ≥ "
                f"{AUROC_RECOVERED:g} (of {len(sae)}), an SAE feature recovers {share['sae']:.0%}, the best "
                f"raw dimension {share['raw']:.0%}, the random-decoder SAE {share['random-decoder']:.0%}."
            ]
        if missed:
            lines.append("The SAE misses what the probe shows is present: " + ", ".join(missed) + ".")
        return lines

    def summary_lines(self, result: GroundTruthResult) -> list[str]:
        g = result.ground_truth
        if g is None:
            return []
        n = len(g.readable_labels)
        if not n:
            line = "  ground truth: the probe reads no variable value at this site (recovery not measured)"
        else:
            share = g.readable_share
            line = (
                f"  ground truth: of {n} probe-readable variable values, {share['sae']:.2f} recovered by an "
                f"SAE feature (raw dim {share['raw']:.2f}, random decoder {share['random-decoder']:.2f})"
            )
        if g.causal_recovery:
            c = g.causal_recovery[0]
            line += f"; ranking AUROC vs the causal set (AUROC ≥ {c.min_auroc:g}) {c.auroc:.2f}"
        return [line]

    def comparison(self, section: ReportDocument, result: GroundTruthResult) -> dict[str, str]:
        g = result.ground_truth
        if g is None:
            return {}
        return {
            "GT recovered (SAE / random dec., of n probe-readable)": (
                f"{section.fmt(g.readable_share.get('sae'))} / "
                f"{section.fmt(g.readable_share.get('random-decoder'))} (n={len(g.readable_labels)})"
            )
        }


def _fmt_interval(i: IntervalScore) -> str:
    return f"{i.mean:+.4g} [{i.low:+.3g}, {i.high:+.3g}] (n={i.n})"


def _index_keys(examples: list[Any]) -> frozenset[str]:
    """The keys the task declares as positions (``meta["index_keys"]``), never scored."""
    return frozenset(k for e in examples for k in e.meta.get("index_keys", ()))


def _declared_counterfactuals(examples: list[Any]) -> dict[str, list[str]]:
    """Variable name -> the declared variables (``name@index``) of that name, in first-seen order."""
    out: dict[str, dict[str, None]] = {}
    for example in examples:
        for record in example.meta.get("counterfactuals", ()):
            out.setdefault(record["name"], {})[record["variable"]] = None
    return {name: list(v) for name, v in out.items()}


def readable_share(recovery: Recovery, readable: list[str]) -> float | None:
    """Share of the probe-readable labels on which ``recovery``'s best unit reaches AUROC 0.9 (None: none)."""
    if not readable:
        return None
    by_label = recovery.by_label()
    return sum(by_label[r].auroc >= AUROC_RECOVERED for r in readable if r in by_label) / len(readable)

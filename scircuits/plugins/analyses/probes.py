"""The ``probes`` analysis: on any benchmark whose examples declare per-token variables, how well a
linear probe on the site's activations reads each variable, scored so that the number means
something.

A benchmark declares variables in ``Example.meta["variables"]``: one dict per token of the traced
sequence (position 0 is the first token, BOS included), mapping a variable's name to its integer
value at that token, ``{}`` where none is defined (the format the ``synth-*`` benchmarks write).
Per variable, on the tokens where it is defined:

- the probe's held-out accuracy and, per value, AUROC (a multinomial logistic regression; train and
  test split by example, never by token);
- the majority-value and token-identity baselines (``probing.identity_accuracy``);
- selectivity against the control task of Hewitt & Liang (2019): the same probe, same split, on
  labels re-assigned at random per token type; selectivity = real − control;
- the same probe on a random-weights baseline: the activations of a randomly initialised model of
  the same config at the same site when the model can be rebuilt from its config, else a random
  projection of the token id and position (``baseline`` says which).

On a benchmark without variables the result is ``null``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel

from scircuits import Analysis, AnalysisResult, DataFormatError

from .probing import (
    control_values,
    example_split,
    identity_accuracy,
    majority_accuracy,
    probe_scores,
    random_projection,
)

if TYPE_CHECKING:
    from scircuits import ReportDocument, StudyContext, StudyResults

TEST_FRACTION = 0.3
L2 = 1e-3
BASELINE_SEED = 4321  # the random-init model's weights (or the projection), apart from the study's seed
BaselineKind = Literal["random-init model", "random projection"]


class ValueProbe(BaseModel):
    """One value of a variable, against the rest, on the held-out tokens."""

    value: int
    n_test: int
    n_positive_test: int
    auroc: float | None  # None: the value is absent from the training or the held-out tokens
    control_auroc: float | None
    selectivity_auroc: float | None  # auroc - control_auroc
    baseline_auroc: float | None


class VariableProbe(BaseModel):
    variable: str
    values: list[int]
    n_tokens: int
    n_test: int  # held-out tokens (of n_test_examples examples)
    n_token_types: int  # distinct token ids among the tokens carrying the variable
    accuracy: float
    majority_accuracy: float  # always the most common training value
    identity_accuracy: float  # each token type's most common training value
    control_accuracy: float | None  # None: fewer than two token types (see control_note)
    selectivity: float | None  # accuracy - control_accuracy
    baseline_accuracy: float
    control_note: str | None = None
    per_value: list[ValueProbe]


class ProbeStudy(BaseModel):
    examples: int
    labelled_tokens: int
    test_examples: int
    test_fraction: float
    l2: float
    split_seed: int
    baseline: BaselineKind
    baseline_note: str
    skipped: list[str]  # variables left out, with why
    variables: list[VariableProbe]


class ProbesResult(AnalysisResult):
    probes: ProbeStudy | None


def declares_variables(examples: list[Any]) -> bool:
    return bool(examples) and all(
        isinstance(e.meta, dict) and isinstance(e.meta.get("variables"), list) for e in examples
    )


@dataclasses.dataclass
class LabelledTokens:
    """Every token that carries a declared variable: the site's activations there, the same site's
    activations in the baseline, and the token's id, position, example and variables."""

    activations: np.ndarray
    baseline: np.ndarray
    token_ids: np.ndarray
    positions: np.ndarray
    example: np.ndarray
    variables: list[dict[str, int]]


def _random_init_model(loaded: Any, seed: int) -> tuple[Any | None, str]:
    """A model of the same class and config with freshly initialised weights, or None and why not."""
    import torch

    model = loaded.model
    if getattr(model, "config", None) is None:
        return None, "the model has no config to rebuild it from"
    if any(p.is_meta for p in model.parameters()):
        return None, "the model runs remotely (--remote): no randomly initialised copy of it is run here"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = type(model)(model.config)
        parameter = next(model.parameters())
        return fresh.to(device=parameter.device, dtype=parameter.dtype).eval(), (
            f"a {type(model).__name__} of the same config with random initial weights (seed {seed}), "
            "read at the same site on the same tokens"
        )
    except Exception as exc:  # any architecture that cannot be rebuilt from its config alone
        return (
            None,
            f"{type(model).__name__} could not be rebuilt from its config ({type(exc).__name__}: {exc})",
        )


class _Stop(Exception):
    """Raised by the site hook: the blocks above the site need not run."""


def _site_outputs(model: Any, module: Any, batch: Any) -> Any:
    """The output of ``module`` when ``model`` runs ``batch``."""
    import torch

    captured: dict[str, Any] = {}

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        captured["x"] = (output[0] if isinstance(output, tuple) else output).detach()
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
            )
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["x"]


def labelled_tokens(context: StudyContext, seed: int) -> tuple[LabelledTokens, BaselineKind, str]:
    examples = context.study.data.examples
    fresh, note = _random_init_model(context.loaded, seed)
    module = None
    if fresh is not None:
        path = context.loaded.site_path(context.layer, context.config.site)
        module = dataclasses.replace(context.loaded, model=fresh).module(path)
    acts, base, ids, positions, owner, variables = [], [], [], [], [], []
    for eb in context.study.data.batches:
        real = eb.batch.attention_mask.bool().cpu()
        position_ids = eb.batch.position_ids.cpu()
        input_ids = eb.batch.input_ids.cpu()
        fresh_out = _site_outputs(fresh, module, eb.batch) if fresh is not None else None
        for example, layout in zip(eb.example_indices, eb.layouts, strict=True):
            declared = examples[example].meta["variables"]
            for row in layout.sequence_indices:
                columns = np.flatnonzero(real[row].numpy())
                if len(columns) != len(declared):
                    raise DataFormatError(
                        f"{examples[example].id}: the model's tokenizer gives {len(columns)} tokens but "
                        f"meta['variables'] describes {len(declared)}; declare one dict per token of the "
                        "traced sequence (BOS included)"
                    )
                cols = [int(c) for c in columns if declared[int(position_ids[row, c])]]
                if not cols:
                    continue
                acts.append(eb.cache.site_output[row, cols].float().cpu().numpy())
                if fresh_out is not None:
                    base.append(fresh_out[row, cols].float().cpu().numpy())
                ids.append(input_ids[row, cols].numpy())
                pos = position_ids[row, cols].numpy()
                positions.append(pos)
                owner += [example] * len(cols)
                variables += [{str(k): int(v) for k, v in declared[int(p)].items()} for p in pos]
    if not acts:
        raise DataFormatError("no token of the examples carries a declared variable (meta['variables'])")
    activations = np.concatenate(acts).astype(np.float64)
    token_ids, position = np.concatenate(ids), np.concatenate(positions)
    if fresh is not None:
        kind: BaselineKind = "random-init model"
        baseline = np.concatenate(base).astype(np.float64)
    else:
        kind = "random projection"
        note = (
            f"{note}; instead a random projection of the token id and position to {activations.shape[1]} "
            f"dimensions (seed {seed})"
        )
        baseline = random_projection(token_ids, position, activations.shape[1], seed)
    tokens = LabelledTokens(activations, baseline, token_ids, position, np.array(owner), variables)
    return tokens, kind, note


def probe_variable(tokens: LabelledTokens, name: str, test_all: np.ndarray, seed: int) -> VariableProbe:
    rows = np.array([i for i, cell in enumerate(tokens.variables) if name in cell])
    values = np.array([tokens.variables[i][name] for i in rows])
    test, ids = test_all[rows], tokens.token_ids[rows]
    real = probe_scores(tokens.activations[rows], values, test, L2)
    baseline = probe_scores(tokens.baseline[rows], values, test, L2)
    control_y = control_values(values, ids, seed)
    control = None if control_y is None else probe_scores(tokens.activations[rows], control_y, test, L2)
    n_types = len(np.unique(ids))
    note = None
    if control is None:
        note = (
            "one token type carries this variable: token identity tells nothing about it, and the control "
            "task would be constant"
            if n_types < 2
            else "the control task could not be drawn with two values"
        )

    def minus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    per_value = []
    for v in sorted(real.auroc):
        c_auc = None if control is None else control.auroc.get(v)
        per_value.append(
            ValueProbe(
                value=v,
                n_test=int(test.sum()),
                n_positive_test=int((values[test] == v).sum()),
                auroc=real.auroc[v],
                control_auroc=c_auc,
                selectivity_auroc=minus(real.auroc[v], c_auc),
                baseline_auroc=baseline.auroc.get(v),
            )
        )
    return VariableProbe(
        variable=name,
        values=sorted(int(v) for v in np.unique(values)),
        n_tokens=len(rows),
        n_test=int(test.sum()),
        n_token_types=n_types,
        accuracy=real.accuracy,
        majority_accuracy=majority_accuracy(values, test),
        identity_accuracy=identity_accuracy(ids, values, test),
        control_accuracy=None if control is None else control.accuracy,
        selectivity=None if control is None else real.accuracy - control.accuracy,
        baseline_accuracy=baseline.accuracy,
        control_note=note,
        per_value=per_value,
    )


def probe_study(tokens: LabelledTokens, seed: int, kind: BaselineKind, note: str) -> ProbeStudy:
    """Every declared variable probed on ``tokens`` (one split by example for all of them)."""
    test = example_split(tokens.example, TEST_FRACTION, seed)
    names = sorted({k for cell in tokens.variables for k in cell})
    variables, skipped = [], []
    for name in names:
        rows = [i for i, cell in enumerate(tokens.variables) if name in cell]
        values = {tokens.variables[i][name] for i in rows}
        in_test = int(test[rows].sum())
        if len(values) < 2:
            skipped.append(f"{name}: one value only")
        elif in_test == 0 or in_test == len(rows):
            skipped.append(f"{name}: every token on one side of the split")
        else:
            variables.append(probe_variable(tokens, name, test, seed))
    return ProbeStudy(
        examples=len(np.unique(tokens.example)),
        labelled_tokens=len(tokens.variables),
        test_examples=len(np.unique(tokens.example[test])),
        test_fraction=TEST_FRACTION,
        l2=L2,
        split_seed=seed,
        baseline=kind,
        baseline_note=note,
        skipped=skipped,
        variables=variables,
    )


def _range(values: list[float]) -> str:
    return "n/a" if not values else f"{min(values):.2f}–{max(values):.2f}"


class Probes(Analysis):
    name = "probes"
    description = "Linear probes of the declared variables, with control task and random baseline"
    order = 85
    Result = ProbesResult

    def run(self, context: StudyContext) -> ProbesResult:
        if not declares_variables(context.study.data.examples):
            return ProbesResult(probes=None)
        tokens, kind, note = labelled_tokens(context, BASELINE_SEED)
        return ProbesResult(probes=probe_study(tokens, context.seed, kind, note))

    def report(self, section: ReportDocument, result: ProbesResult, results: StudyResults) -> None:
        p = result.probes
        if p is None:
            return
        section.heading(self.description)
        section.paragraph(
            f"{p.labelled_tokens:,} tokens of {p.examples} examples carry a declared variable. A "
            f"multinomial logistic probe (L2 {p.l2:g}) per variable on the site's activations, fitted on "
            f"{1 - p.test_fraction:.0%} of the examples and scored on the other {p.test_examples} "
            "(split by example). Control: the same probe on labels re-drawn at random once per token "
            "type (Hewitt & Liang 2019); selectivity = accuracy − control accuracy. Identity: each token "
            f"type's most common value. Baseline ({p.baseline}): {p.baseline_note}."
        )
        f = section.fmt
        section.table(
            [
                "variable",
                "values",
                "tokens (test)",
                "token types",
                "accuracy",
                "majority",
                "identity",
                "control",
                "selectivity",
                p.baseline,
            ],
            [
                [
                    v.variable,
                    len(v.values),
                    f"{v.n_tokens} ({v.n_test})",
                    v.n_token_types,
                    f(v.accuracy),
                    f(v.majority_accuracy),
                    f(v.identity_accuracy),
                    f(v.control_accuracy) if v.control_accuracy is not None else "n/a",
                    f(v.selectivity) if v.selectivity is not None else "n/a",
                    f(v.baseline_accuracy),
                ]
                for v in p.variables
            ],
        )
        section.table(
            ["variable=value", "held-out positives", "AUROC", "control AUROC", "selectivity", p.baseline],
            [
                [
                    f"{v.variable}={pv.value}",
                    pv.n_positive_test,
                    *(
                        "n/a" if x is None else f(x)
                        for x in (pv.auroc, pv.control_auroc, pv.selectivity_auroc, pv.baseline_auroc)
                    ),
                ]
                for v in p.variables
                for pv in v.per_value
            ],
        )
        notes = [f"{v.variable}: {v.control_note}" for v in p.variables if v.control_note]
        if notes or p.skipped:
            section.paragraph("Notes: " + "; ".join(notes + p.skipped) + ".")

    def findings(self, section: ReportDocument, result: ProbesResult, results: StudyResults) -> list[str]:
        p = result.probes
        if p is None or not p.variables:
            return []
        return [
            f"Probes: held-out accuracy {_range([v.accuracy for v in p.variables])} over "
            f"{len(p.variables)} variables; selectivity against the control task "
            f"{_range([v.selectivity for v in p.variables if v.selectivity is not None])}; the same probe "
            f"on the {p.baseline} {_range([v.baseline_accuracy for v in p.variables])}."
        ]

    def summary_lines(self, result: ProbesResult) -> list[str]:
        p = result.probes
        if p is None or not p.variables:
            return []
        return [
            f"  probes: {', '.join(f'{v.variable} {v.accuracy:.2f}' for v in p.variables)} held out; "
            f"selectivity {_range([v.selectivity for v in p.variables if v.selectivity is not None])}; "
            f"{p.baseline} {_range([v.baseline_accuracy for v in p.variables])}"
        ]

    def comparison(self, section: ReportDocument, result: ProbesResult) -> dict[str, str]:
        p = result.probes
        if p is None or not p.variables:
            return {}
        return {"probe accuracy (selectivity)": _range([v.accuracy for v in p.variables])}

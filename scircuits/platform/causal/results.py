"""The causal study's artifacts: ``results.json`` (``StudyResults``) and ``examples.jsonl``
(``ExampleRow`` per line). This module alone knows their file names and format.

results.json holds the study-level fields typed below and, at the top level, the fields of every
analysis's result (``Analysis.Result``); ``analyses`` lists the analyses in the order they ran.
``schema_version`` numbers this layout. A file of the first layout (``format_version`` 1, no
``schema_version``) is migrated on reading: its analyses are the registered ones whose fields it
holds. A file of another format or a newer schema is refused with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from scircuits.files import atomic_path, write_atomic
from scircuits.platform.common.provenance import file_sha256
from scircuits.platform.contract import jsonvalues
from scircuits.platform.contract.analyses import Analysis
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.options import describe_validation_error
from scircuits.platform.contract.study import (
    RESULTS_FORMAT,
    RESULTS_FORMAT_VERSION,
    SCHEMA_VERSION,
    EvaluationSplit,
    StatisticsInfo,
    StudyResults,
)
from scircuits.platform.train.checkpoint import WEIGHTS_FILE

RESULTS_FILE = "results.json"
EXAMPLES_FILE = "examples.jsonl"

__all__ = ["SCHEMA_VERSION", "EvaluationSplit", "StatisticsInfo", "StudyResults"]  # defined in the contract


class ConditionScore(BaseModel):
    logprob: float
    correct: bool


class ScoreSet(BaseModel):
    """An example's scores under a group of conditions (``record_set``), in the group's order."""

    logprob: list[float]
    correct: list[bool]


class ExampleRow(BaseModel):
    """One line of examples.jsonl: an example's score under every recorded condition.

    ``evaluation``: whether the example is one the effects are measured on (a selection example
    sharing a batch with them is scored too, so ``scores`` alone does not say). ``sets``: on the
    evaluation examples, the grouped conditions, e.g. ``control<k>``: the R matched control sets of
    that k in the order of ``control_sets.features``. Both absent in files written before them."""

    id: str
    target: str
    evaluation: bool | None = None
    scores: dict[str, ConditionScore]
    sets: dict[str, ScoreSet] | None = None


# ----------------------------------------------------------------------------- reading and writing


def results_path(folder: str | Path) -> Path:
    return Path(folder) / RESULTS_FILE


def examples_path(folder: str | Path) -> Path:
    return Path(folder) / EXAMPLES_FILE


def write_study(folder: str | Path, results: StudyResults, rows: Iterable[ExampleRow]) -> Path:
    """Write examples.jsonl then results.json (each atomically; results.json last marks completion)."""
    out = Path(folder)
    text = results.to_json()  # first: results that cannot be written leave nothing half-written
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(examples_path(out)) as tmp, open(tmp, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row.model_dump(mode="python", exclude_none=True)) + "\n")
    write_atomic(results_path(out), text)
    return out


def read_examples(folder: str | Path) -> list[ExampleRow]:
    rows = []
    for line in examples_path(folder).read_text().splitlines():
        if line.strip():
            rows.append(ExampleRow.model_validate_json(line))
    return rows


def migrate(data: dict[str, Any], analyses: Iterable[Analysis], source: str) -> dict[str, Any]:
    """The dict of an older results.json in the current layout; ConfigError when it cannot be read."""
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(
            f"{source} is not a scircuits causal results file (format {found!r}, expected "
            f"{RESULTS_FORMAT!r}); give the causal/ folder that `scircuits ablate` or `scircuits run` wrote"
        )
    version = data.get("schema_version")
    if version is None:
        if data.get("format_version") != 1:
            raise ConfigError(
                f"{source} has format_version {data.get('format_version')!r} and no schema_version; "
                "this scircuits reads format_version 1 or a schema_version: rerun the ablate stage"
            )
        ordered = sorted(analyses, key=lambda a: (a.order, a.name))
        present = [
            a.name
            for a in ordered
            if all(k in data for k, info in a.Result.model_fields.items() if info.is_required())
        ]
        return {**data, "schema_version": SCHEMA_VERSION, "analyses": present}
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ConfigError(
            f"{source} has schema_version {version!r}, newer than this scircuits reads "
            f"({SCHEMA_VERSION}): upgrade scircuits, or rerun the ablate stage with this one"
        )
    if data.get("format_version", RESULTS_FORMAT_VERSION) != RESULTS_FORMAT_VERSION:
        raise ConfigError(
            f"{source} has format_version {data.get('format_version')!r}; this scircuits reads "
            f"{RESULTS_FORMAT_VERSION}: upgrade scircuits, or rerun the ablate stage with this one"
        )
    return data


R = TypeVar("R", bound=StudyResults)


def read_results(
    path: str | Path,
    analyses: Iterable[Analysis] = (),
    model: type[R] = StudyResults,  # type: ignore[assignment]
) -> R:
    """results.json (a file, or the folder holding it) as typed results (``model``: StudyResults or a
    subclass), migrated when older."""
    path = Path(path)
    if path.is_dir():
        path = results_path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: run `scircuits run` or `scircuits ablate` first")
    data = migrate(jsonvalues.load_file(path), list(analyses), str(path))
    try:
        return jsonvalues.validate_nulls_as_nan(model, data)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise ConfigError(
            f"{path} does not match the results schema: {describe_validation_error(exc)}"
        ) from None


def read_checked_results(path: str | Path, analyses: Iterable[Analysis]) -> dict[str, Any]:
    """results.json as a dict whose study fields and the fields of every analysis in ``analyses``
    have their types; ConfigError, in one line, naming the first wrong one."""
    analyses = list(analyses)
    results = read_results(path, analyses)
    for analysis in analyses:
        try:
            results.result_of(analysis)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}; rerun the ablate stage") from None
    return results.model_dump(mode="python")


def other_sae_than_measured(results: Any, sae_dir: Path) -> str | None:
    """Why the SAE in ``sae_dir`` is not the one ``results`` (results.json's dict) was measured with
    (its weights' sha256 differs from the recorded one), or None (the same, or nothing recorded)."""
    provenance = results.get("provenance") if isinstance(results, dict) else None
    recorded = (
        (provenance or {}).get("sae", {}).get("weights_sha256") if isinstance(provenance, dict) else None
    )
    weights = Path(sae_dir) / WEIGHTS_FILE
    if not isinstance(recorded, str) or not weights.is_file() or file_sha256(weights) == recorded:
        return None
    return (
        f"{weights} is not the SAE the study in {Path(sae_dir).parent / 'causal'} measured (sha256 "
        f"{file_sha256(weights)[:12]}, measured {recorded[:12]}): its causal numbers are the other SAE's; "
        "rerun the study (`scircuits run`, or `scircuits ablate`)"
    )


def recorded_analyses(folder: str | Path) -> list[str] | None:
    """The analyses a complete results.json in ``folder`` holds (None: none readable)."""
    try:
        value = json.loads(results_path(folder).read_text()).get("analyses")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return [str(v) for v in value] if isinstance(value, list) else None


def recorded_config_hash(folder: str | Path) -> str | None:
    """The config hash a complete results.json in ``folder`` was made under (None: none readable)."""
    path = results_path(folder)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("config_hash")
    except (json.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None

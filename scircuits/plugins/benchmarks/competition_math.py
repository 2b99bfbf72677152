"""``math``: competition mathematics (MATH, Hendrycks et al.), answers in ``\\boxed{...}``.

Rows are JSON objects with ``problem``, ``solution``, ``level`` ("Level 3" or 3) and ``type`` (or
``subject``, as in the MATH-500 file). The target is the content of the LAST ``\\boxed{...}`` or
``\\fbox{...}`` of the solution, nested braces kept (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``).
Prompts (``cot`` option)::

    none (default): "Problem: {problem}\\nAnswer: $\\boxed{"
    gold:           "Problem: {problem}\\nSolution: {solution up to and including its last '\\boxed{'}"
    target:         "{boxed content}"
    delimiter:      "}$" (none); "}$", "}." or "}" (gold: as the solution closes its box)

so in both modes the model writes the answer inside the box, where the solution writes it, and
closes the box; the delimiter is scored with the answer. It includes the character after the "}"
when SmolLM2-style tokenizers merge the two ("}$" and "}." are single tokens, so a model that closes
the box naturally never writes a lone "}" there): "}$" after ``none``'s "$\\boxed{", and in
``gold`` mode what the solution itself writes ("}$" in "\\boxed{2}$.", "}." in "\\boxed{2}.$", else
"}"). ``gold`` puts the gold solution in the prompt, which often states the answer before boxing
it, so accuracy there largely measures copying; the mode is named in the run directory and the
report (``label``: "cot-none", "cot-gold"). meta["answer_in_prompt"]: the boxed content occurs in
the prompt (as a whole number when it is one, see ``answers.occurs_in``).

A solution without a boxed answer is a DataFormatError (every MATH solution has one; skipping rows
silently would change what "the test set" means).

Examples follow the file order (``seed`` is not used); the ``level``/``type`` filters drop rows but
ids keep the row's index in the file: "math/<split>/<row index>". ``data`` is a directory holding
``<split>.jsonl`` (``test.jsonl``, ``math500.jsonl``, ``train.jsonl``) or one ``.jsonl`` file (used for
whichever split is asked for).

Without ``data`` the split is read through `datasets` into the Hugging Face cache (see ``hub.py``):
``test``/``train`` from ``DigitalLearningGmbH/MATH-lighteval`` (config ``default``: the 5,000/7,500
MATH problems in parquet, columns ``problem``, ``level``, ``type``, ``solution``), ``math500`` from
``HuggingFaceH4/MATH-500`` (split ``test``: ``problem``, ``solution``, ``answer``, ``subject``, ``level``
as a number, ``unique_id``). The columns are the file's fields, read by the same code; meta["row"]
is the row's index there (meta["line"] for a file).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from scircuits import DataFormatError, Example

from .answers import occurs_in
from .boxed import UnbalancedBoxError, last_boxed
from .datafiles import DataFileBenchmark, read_jsonl, require_text
from .hub import HubDataset, Row

EXPECTED_DATA = "a directory holding test.jsonl and/or math500.jsonl (MATH format), or one .jsonl file"
MATH_TYPES = (
    "Algebra",
    "Counting & Probability",
    "Geometry",
    "Intermediate Algebra",
    "Number Theory",
    "Prealgebra",
    "Precalculus",
)
HUB_DATASETS = {
    "test": HubDataset("DigitalLearningGmbH/MATH-lighteval", "default", "test"),
    "train": HubDataset("DigitalLearningGmbH/MATH-lighteval", "default", "train"),
    "math500": HubDataset("HuggingFaceH4/MATH-500", None, "test"),
}
_LEVEL = re.compile(r"(?:Level\s*)?(\d+|\?)", re.IGNORECASE)


def _comma_list(value: Any) -> Any:
    if isinstance(value, (str, int)):
        return [part.strip() for part in str(value).split(",") if part.strip()]
    return value


class MathOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str | None = None  # directory or .jsonl file
    cot: Literal["none", "gold"] = "none"  # gold: the gold solution up to its box in the prompt
    level: list[int] | None = None  # keep only these levels (1-5)
    type: list[str] | None = None  # keep only these subjects, e.g. ["Algebra", "Number Theory"]

    @field_validator("level", "type", mode="before")
    @classmethod
    def _comma_lists(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("level")
    @classmethod
    def _level_range(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(not 1 <= level <= 5 for level in value):
            raise ValueError(f"levels are 1 to 5, got {value}")
        return value

    @field_validator("type")
    @classmethod
    def _known_types(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        by_lower = {name.lower(): name for name in MATH_TYPES}
        unknown = [name for name in value if name.lower() not in by_lower]
        if unknown:
            raise ValueError(f"unknown type {unknown}; MATH types: {', '.join(MATH_TYPES)}")
        return [by_lower[name.lower()] for name in value]


def box_delimiter(solution: str, end: int) -> str:
    """What closes the box at ``solution[end]`` (its "}"), with the next character when that is "$"
    or "." (tokenisers merge "}$" and "}." into one token)."""
    following = solution[end + 1 : end + 2]
    return "}" + following if following in ("$", ".") else "}"


def parse_level(value: Any, where: str) -> int | None:
    """3 from "Level 3" or 3; None for "Level ?" (a few MATH rows)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _LEVEL.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise DataFormatError(f"{where}: expected 'level' like \"Level 3\" or 3, got {value!r:.80}")
    return None if match.group(1) == "?" else int(match.group(1))


class MathBenchmark(DataFileBenchmark):
    name = "math"
    description = (
        "MATH competition problems; the target is the last \\boxed{...} answer (hub mirror or --data)."
    )
    splits = ("test", "math500", "train")
    multiple_choice = False
    Options = MathOptions

    data_suffix = ".jsonl"
    expected_data = EXPECTED_DATA

    def examples_from(self, path: Path, split: str, opts: MathOptions) -> Iterator[Example]:  # type: ignore[override]
        rows = ((f"{path}, line {line_no}", row, {"line": line_no}) for line_no, row in read_jsonl(path))
        return self._examples(rows, split, str(path), opts)

    def label(self, options: Any = None) -> str:
        opts: MathOptions = self.parse_options(options)  # type: ignore[assignment]
        return f"cot-{opts.cot}"

    def hub_dataset(self, split: str) -> HubDataset | None:
        return HUB_DATASETS.get(split)

    def examples_from_hub(  # type: ignore[override]
        self, rows: Iterator[Row], hub: HubDataset, split: str, opts: MathOptions
    ) -> Iterator[Example]:
        placed = ((where, row, {"row": index}) for index, (where, row) in enumerate(rows))
        return self._examples(placed, split, f"hf:{hub.path}", opts)

    def _examples(
        self,
        rows: Iterable[tuple[str, dict[str, Any], dict[str, int]]],
        split: str,
        source: str,
        opts: MathOptions,
    ) -> Iterator[Example]:
        for index, (where, row, position) in enumerate(rows):
            problem = require_text(row, "problem", where).strip()
            solution = require_text(row, "solution", where)
            if "level" not in row:
                raise DataFormatError(f"{where}: expected the field 'level'; the object has {sorted(row)}")
            level = parse_level(row["level"], where)
            subject = require_text(row, "type" if "type" in row or "subject" not in row else "subject", where)
            try:
                box = last_boxed(solution)
            except UnbalancedBoxError as exc:
                raise DataFormatError(
                    f"{where}: expected the solution's last \\boxed{{...}} to close: {exc}"
                ) from None
            if box is None or not box.content.strip():
                raise DataFormatError(
                    f"{where}: expected the 'solution' to give its answer in \\boxed{{...}} "
                    "(or \\fbox{...}), " + ("found none" if box is None else "found an empty box")
                )
            if opts.level is not None and level not in opts.level:
                continue
            if opts.type is not None and subject not in opts.type:
                continue
            if opts.cot == "gold":
                prompt = f"Problem: {problem}\nSolution: {solution[: box.start]}"
            else:
                prompt = f"Problem: {problem}\nAnswer: $\\boxed{{"
            yield Example(
                id=f"math/{split}/{index}",
                prompt=prompt,
                target=box.content,
                delimiter=box_delimiter(solution, box.end) if opts.cot == "gold" else "}$",
                meta={
                    "source": source,
                    **position,
                    "level": level,
                    "type": subject,
                    "prompt_mode": opts.cot,
                    "answer_in_prompt": occurs_in(box.content, prompt),
                },
            )

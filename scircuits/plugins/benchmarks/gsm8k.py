"""``gsm8k``: grade-school math word problems (GSM8K JSONL: ``{"question", "answer"}``).

The gold ``answer`` is reasoning lines, then a last line ``#### N``. Prompts (``cot`` option)::

    none (default): "Question: {question}\\nAnswer:"                            delimiter "\\n"
    gold:           "Question: {question}\\nAnswer: {reasoning}\\nThe answer is"  delimiter "."
    target:         " {N}"

``none`` asks for the answer directly. ``gold`` puts the gold solution in the prompt: its reasoning
usually ends on the answer, so accuracy there largely measures copying it; the mode is named in the
run directory and the report (``label``: "cot-none", "cot-gold"). The delimiter is what ends the
answer in each format (the answer line; the sentence "The answer is N.") and is scored with it.
meta["answer_in_prompt"]: N occurs as a number in the prompt (``answers.occurs_in``).

``reasoning`` is the gold answer without its ``#### N`` line and with the calculator annotations
``<<48/2=24>>`` removed (they are tool calls, not text a model reads or writes). ``N`` is the text
after ``####`` as the file writes it (thousands separators kept: " 1,600"); meta["value"] holds it
as a number.

Examples follow the file order (``seed`` is not used); ids are "gsm8k/<split>/<row index>".
``data`` is a directory holding ``train.jsonl``/``test.jsonl`` or one ``.jsonl`` file (used for
whichever split is asked for). Without ``data`` the Hugging Face dataset ``openai/gsm8k`` (config
``main``, splits ``train``/``test``) is read through `datasets` into the Hugging Face cache, and
offline from there afterwards (see ``hub.py``); its columns ``question``/``answer`` are the file's
fields, so both give the same examples.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from scircuits import Benchmark, DataFormatError, Example

from .answers import occurs_in
from .datafiles import read_jsonl, require_text, resolve_data_file, take
from .hub import HubDataset, hub_rows

HF_DATASET = "openai/gsm8k"
HF_CONFIG = "main"
EXPECTED_DATA = "a directory holding train.jsonl and test.jsonl (GSM8K format), or one .jsonl file"
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_FINAL = "####"


class GSM8KOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str | None = None  # directory or .jsonl file; None reads openai/gsm8k (main) through `datasets`
    cot: Literal["none", "gold"] = "none"  # gold: the gold solution in the prompt


def split_answer(answer: str, where: str) -> tuple[str, str]:
    """(reasoning without annotations, final answer text) of a gold GSM8K answer."""
    if _FINAL not in answer:
        raise DataFormatError(f"{where}: expected the 'answer' to end with a '#### N' line; it has no '####'")
    reasoning, final = answer.rsplit(_FINAL, 1)
    final = final.strip()
    if not final:
        raise DataFormatError(
            f"{where}: expected a number after '####' at the end of the 'answer', found nothing"
        )
    return _CALCULATOR.sub("", reasoning).strip(), final


def numeric_value(text: str) -> int | float | None:
    cleaned = text.replace(",", "").replace("$", "").strip()
    try:
        return int(cleaned)
    except ValueError:
        try:
            return float(cleaned)
        except ValueError:
            return None


class GSM8KBenchmark(Benchmark):
    name = "gsm8k"
    description = (
        "GSM8K word problems: the question, then the final number (cot=gold: after the gold "
        "reasoning) (openai/gsm8k or --data)."
    )
    splits = ("test", "train")
    multiple_choice = False
    Options = GSM8KOptions

    def examples(
        self,
        split: str = "test",
        limit: int | None = None,
        seed: int = 0,
        options: Mapping[str, Any] | BaseModel | None = None,
    ) -> Iterator[Example]:
        self.check_split(split)
        opts: GSM8KOptions = self.parse_options(options)  # type: ignore[assignment]
        if opts.data is not None:
            path = resolve_data_file(self.name, opts.data, split, ".jsonl", EXPECTED_DATA)
            rows: Iterable[tuple[str, dict[str, Any]]] = (
                (f"{path}, line {line_no}", row) for line_no, row in read_jsonl(path)
            )
            source = str(path)
        else:
            hub = self.hub_dataset(split)
            rows = hub_rows(self.name, hub, EXPECTED_DATA)
            source = f"hf:{hub.path}"
        return take(self._examples(rows, split, source, opts), limit)

    def label(self, options: Mapping[str, Any] | BaseModel | None = None) -> str:
        opts: GSM8KOptions = self.parse_options(options)  # type: ignore[assignment]
        return f"cot-{opts.cot}"

    def hub_dataset(self, split: str) -> HubDataset:
        return HubDataset(HF_DATASET, HF_CONFIG, split)

    def _examples(
        self, rows: Iterable[tuple[str, dict[str, Any]]], split: str, source: str, opts: GSM8KOptions
    ) -> Iterator[Example]:
        for index, (where, row) in enumerate(rows):
            question = require_text(row, "question", where).strip()
            reasoning, final = split_answer(require_text(row, "answer", where), where)
            if opts.cot == "gold":
                prompt, delimiter = f"Question: {question}\nAnswer: {reasoning}\nThe answer is", "."
            else:
                prompt, delimiter = f"Question: {question}\nAnswer:", "\n"
            yield Example(
                id=f"gsm8k/{split}/{index}",
                prompt=prompt,
                target=f" {final}",
                delimiter=delimiter,
                meta={
                    "source": source,
                    "where": where,
                    "answer": final,
                    "value": numeric_value(final),
                    "prompt_mode": opts.cot,
                    "answer_in_prompt": occurs_in(final, prompt),
                },
            )

"""``logic``: LogiQA (English) logical reasoning, scored as multiple choice over four options.

The file is blocks of 8 lines: a blank line, the answer letter (a-d), the context, the question and
four option lines "A.…" to "D.…". The prompt::

    "{context}\\nQuestion: {question}\\nA. {option A}\\nB. {option B}\\nC. {option C}\\nD. {option D}
    \\nAnswer:"   (one string)

``choices`` (option ``choices``): "text" (default) scores the four option texts, each with a leading
space (" {option text}"); "letter" scores " A", " B", " C", " D". target = choices[answer_index].
No delimiter: the choices compete with each other, so none needs to end (docs/metrics.md).

Option labels. The published English files are a machine translation and a few option lines lost or
moved their label: "A No dangshen", "A? Many ...", "d.The ...", the order "A. C. B. D." (the labels,
not the line order, match the answer letter there), or the label pushed into the text ("When the
land in City A.B was ..."). So: when all four lines carry a "X." label and the labels are A-D in some
order, the labels decide which option is which; otherwise the lines are A-D in order, a line's
label is removed when it is its own letter ("B.", "B ", "B?"), an unlabelled line is kept verbatim,
and a line labelled with another letter ("A." where B belongs) is a DataFormatError. A block whose
separator line is not blank, whose answer is not a-d, or that has an empty line where text belongs
is a DataFormatError too, with the file, the line number and what was expected.

Examples follow the file order (``seed`` is not used); ids are "logic/<split>/<block index>".
``data`` is a directory holding ``test.txt``/``eval.txt`` (and ``train.txt``) or one file.

Without ``data`` the split is read through `datasets` into the Hugging Face cache (see ``hub.py``)
from ``extraordinarylab/logiqa`` (config ``default``, parquet; our ``eval`` is its ``validation``):
the same 651/651/7,376 LogiQA English problems as columns ``context``, ``question``, ``choices``
(the four option texts, labels removed), ``answer`` (the letter) and ``answer_index`` (0-3). The
option texts are used as the hub gives them (stripped); meta["row"] is the row's index there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from scircuits import DataFormatError, Example

from .datafiles import DataFileBenchmark, require_text
from .hub import HubDataset, Row

EXPECTED_DATA = "a directory holding test.txt and eval.txt (LogiQA English format), or one .txt file"
LETTERS = ("A", "B", "C", "D")
BLOCK_LINES = 8
HF_DATASET = "extraordinarylab/logiqa"
HUB_SPLITS = {"test": "test", "eval": "validation", "train": "train"}
_DOT_LABEL = re.compile(r"([A-Da-d])\s*[.．]\s*")  # "B.", "d.", "B. "
_LOOSE_LABEL = re.compile(r"([A-D])(?:\s*\?\s*|\s+)")  # "B No Shouwu", "B? Although"


class LogiQAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str | None = None  # directory or .txt file
    choices: Literal["text", "letter"] = "text"


def _read_blocks(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number of the block's first line, its 8 lines); trailing blank lines are ignored."""
    with open(path, encoding="utf-8") as handle:
        lines = [line.rstrip("\r\n") for line in handle]
    while lines and not lines[-1].strip():
        lines.pop()
    for start in range(0, len(lines), BLOCK_LINES):
        block = lines[start : start + BLOCK_LINES]
        if len(block) < BLOCK_LINES:
            raise DataFormatError(
                f"{path}, line {start + 1}: expected a block of {BLOCK_LINES} lines (blank, answer letter, "
                f"context, question, options A-D), but the file ends after {len(block)}"
            )
        yield start + 1, block


def _option_label(line: str, letter: str) -> tuple[str | None, str]:
    """(label letter or None, text without the label) of an option line expected at ``letter``."""
    match = _DOT_LABEL.match(line)
    if match:
        return match.group(1).upper(), line[match.end() :]
    match = _LOOSE_LABEL.match(line)
    if match and match.group(1) == letter:
        return letter, line[match.end() :]
    return None, line


def parse_option_lines(option_lines: list[str], first_line: int, path: Path) -> list[str]:
    """The texts of options A-D from the four option lines of a block (see the module docstring)."""
    parsed = [
        _option_label(line.strip(), letter) for line, letter in zip(option_lines, LETTERS, strict=False)
    ]
    labels = [label for label, _ in parsed]
    if all(label is not None for label in labels) and sorted(labels) == list(LETTERS):  # type: ignore[type-var]
        by_label = {label: text.strip() for label, text in parsed}
        texts = [by_label[letter] for letter in LETTERS]
    else:
        texts = []
        for offset, ((label, text), letter) in enumerate(zip(parsed, LETTERS, strict=False)):
            if label is not None and label != letter:
                raise DataFormatError(
                    f"{path}, line {first_line + offset}: expected option {letter}, a line starting with "
                    f"'{letter}.', got {option_lines[offset]!r:.60}"
                )
            texts.append(text.strip())
    for offset, text in enumerate(texts):
        if not text:
            raise DataFormatError(
                f"{path}, line {first_line + offset}: expected the text of option {LETTERS[offset]}, "
                "got an empty line"
            )
    return texts


def parse_block(lines: list[str], first_line: int, path: Path) -> tuple[str, str, str, list[str]]:
    """(answer letter A-D, context, question, option texts) of one 8-line block."""
    blank, answer, context, question = (line.strip() for line in lines[:4])
    if blank:
        raise DataFormatError(
            f"{path}, line {first_line}: expected the blank line that starts a block, got {lines[0]!r:.60}"
        )
    if answer.upper() not in LETTERS:
        raise DataFormatError(
            f"{path}, line {first_line + 1}: expected the answer letter a, b, c or d, got {lines[1]!r:.60}"
        )
    for offset, (what, text) in ((2, ("context", context)), (3, ("question", question))):
        if not text:
            raise DataFormatError(
                f"{path}, line {first_line + offset}: expected the {what}, got an empty line"
            )
    return answer.upper(), context, question, parse_option_lines(lines[4:8], first_line + 4, path)


def render_prompt(context: str, question: str, options: list[str]) -> str:
    lettered = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, options, strict=False))
    return f"{context}\nQuestion: {question}\n{lettered}\nAnswer:"


class LogiQABenchmark(DataFileBenchmark):
    name = "logic"
    description = "LogiQA logical reasoning, multiple choice over four options (hub mirror or --data)."
    splits = ("test", "eval", "train")
    multiple_choice = True
    Options = LogiQAOptions

    data_suffix = ".txt"
    expected_data = EXPECTED_DATA

    def examples_from(self, path: Path, split: str, opts: LogiQAOptions) -> Iterator[Example]:  # type: ignore[override]
        for index, (first_line, lines) in enumerate(_read_blocks(path)):
            answer, context, question, options = parse_block(lines, first_line, path)
            meta = {"source": str(path), "line": first_line, "answer_letter": answer}
            yield self._example(split, index, context, question, options, LETTERS.index(answer), opts, meta)

    def hub_dataset(self, split: str) -> HubDataset | None:
        return HubDataset(HF_DATASET, "default", HUB_SPLITS[split])

    def examples_from_hub(  # type: ignore[override]
        self, rows: Iterator[Row], hub: HubDataset, split: str, opts: LogiQAOptions
    ) -> Iterator[Example]:
        for index, (where, row) in enumerate(rows):
            context = require_text(row, "context", where).strip()
            question = require_text(row, "question", where).strip()
            options = hub_choices(row, where)
            answer_index = hub_answer_index(row, where)
            meta = {"source": f"hf:{hub.path}", "row": index, "answer_letter": LETTERS[answer_index]}
            yield self._example(split, index, context, question, options, answer_index, opts, meta)

    def _example(
        self,
        split: str,
        index: int,
        context: str,
        question: str,
        options: list[str],
        answer_index: int,
        opts: LogiQAOptions,
        meta: dict[str, Any],
    ) -> Example:
        if opts.choices == "text":
            choices = tuple(f" {text}" for text in options)
        else:
            choices = tuple(f" {letter}" for letter in LETTERS)
        return Example(
            id=f"logic/{split}/{index}",
            prompt=render_prompt(context, question, options),
            target=choices[answer_index],
            choices=choices,
            answer_index=answer_index,
            meta=meta,
        )


def hub_choices(row: dict[str, Any], where: str) -> list[str]:
    """The four option texts of a hub row's ``choices``."""
    choices = row.get("choices")
    if not isinstance(choices, list) or len(choices) != len(LETTERS):
        raise DataFormatError(
            f"{where}: expected 'choices' to be a list of 4 option texts, got {choices!r:.80}"
        )
    texts = [text.strip() if isinstance(text, str) else "" for text in choices]
    for letter, text in zip(LETTERS, texts, strict=True):
        if not text:
            raise DataFormatError(
                f"{where}: expected the text of option {letter} in 'choices', got {choices!r:.80}"
            )
    return texts


def hub_answer_index(row: dict[str, Any], where: str) -> int:
    """0-3 from a hub row's ``answer_index`` (or, lacking it, its ``answer`` letter); the two agree."""
    letter = row.get("answer")
    letter = letter.strip().upper() if isinstance(letter, str) else letter
    from_letter = LETTERS.index(letter) if letter in LETTERS else None
    if "answer_index" not in row:
        if from_letter is None:
            raise DataFormatError(f"{where}: expected 'answer_index' 0-3 or 'answer' A-D, got {letter!r:.20}")
        return from_letter
    index = row["answer_index"]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(LETTERS):
        raise DataFormatError(f"{where}: expected 'answer_index' 0-3, got {index!r:.20}")
    if from_letter is not None and from_letter != index:
        raise DataFormatError(f"{where}: 'answer' {letter!r} and 'answer_index' {index} disagree")
    return index

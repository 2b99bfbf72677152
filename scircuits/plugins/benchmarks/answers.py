"""Whether an answer occurs in a prompt (``Example.meta["answer_in_prompt"]``): a prompt that holds
the answer lets a model copy it, so accuracy is reported apart for such examples."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d+)?")


def occurs_in(answer: str, text: str) -> bool:
    """``answer`` (stripped) occurs in ``text``; a number only as a whole number there ("18" is in
    "$18 a day" but not in "180" or "1.18"), any other answer as a substring."""
    answer = answer.strip()
    if not answer:
        return False
    if _NUMBER.fullmatch(answer):
        pattern = rf"(?<![\d.,]){re.escape(answer)}(?!\d|[.,]\d)"
        return re.search(pattern, text) is not None
    return answer in text

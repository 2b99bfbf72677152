"""Finding the final ``\\boxed{...}`` (or ``\\fbox{...}``) answer of a LaTeX solution."""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)\s*\{")


@dataclass(frozen=True)
class BoxedAnswer:
    content: str  # what is inside the braces, nested braces kept: "\\frac{1}{2}"
    start: int  # index of the first character inside the braces
    end: int  # index of the closing brace


class UnbalancedBoxError(ValueError):
    """A box command whose opening brace is never closed."""


def last_boxed(text: str) -> BoxedAnswer | None:
    """The content of the last ``\\boxed{...}``/``\\fbox{...}`` in ``text``, or None if there is none.

    Braces are matched with nesting; an escaped brace (``\\{`` or ``\\}``) does not count.
    """
    matches = list(_BOX_COMMAND.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    depth = 1
    index = start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2  # skip the escaped character, so \{ and \} never change the depth
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return BoxedAnswer(text[start:index], start, index)
        index += 1
    raise UnbalancedBoxError(f"the brace opened at character {start - 1} is never closed")

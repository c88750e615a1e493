"""Bounded answer extraction shared by graders: \\boxed{...} with nested braces, and answer letters."""

from __future__ import annotations

import re

from esft.tasks.base import tail

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(completion: str) -> str | None:
    """Content of the last \\boxed{...}, honouring nested braces; None if absent or unbalanced."""
    text = tail(completion)
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    return None


_JSON_ANSWER = re.compile(r"""["']answer["']\s*:\s*["']\s*([A-D])\s*["']""", re.IGNORECASE)
_ANSWER_COLON = re.compile(r"\banswer\s*(?:is|:|=)\s*\(?\s*([A-D])\b(?![a-z])", re.IGNORECASE)
_STANDALONE = re.compile(r"(?<![A-Za-z0-9])([A-D])(?![A-Za-z0-9])")


def answer_letter(completion: str) -> str | None:
    """The chosen option A-D: `"answer":"X"`, then `answer: X`, then the last standalone capital A-D.

    The last fallback is case-sensitive so that the article "a" is never read as option A.
    """
    text = tail(completion)
    for pattern in (_JSON_ANSWER, _ANSWER_COLON):
        hits = pattern.findall(text)
        if hits:
            letter = hits[-1].upper()
            # `answer: a` is only trusted in the JSON form; prose "answer is a ..." is an article
            if pattern is _ANSWER_COLON and hits[-1].islower():
                continue
            return letter
    hits = _STANDALONE.findall(text)
    return hits[-1] if hits else None

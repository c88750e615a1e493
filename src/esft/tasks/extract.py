"""Bounded answer extraction shared by graders: \\boxed{...} with nested braces, and answer letters."""

from __future__ import annotations

import re

from esft.tasks.base import tail

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(completion: str) -> str | None:
    """Content of the last \\boxed{...}, honouring nested braces; None if absent or unbalanced.

    Braces are matched in one pass, so the cost stays linear however many boxes are left open."""
    text = tail(completion)
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    close: dict[int, int] = {}
    stack: list[int] = []
    for i in range(starts[0] - 1, len(text)):
        ch = text[i]
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            close[stack.pop()] = i
    for start in reversed(starts):
        end = close.get(start - 1)
        if end is not None:
            return text[start:end]
    return None


_JSON_ANSWER = re.compile(r"""["']answer["']\s*:\s*["']\s*([A-D])\s*["']""", re.IGNORECASE)
_ANSWER_COLON = re.compile(r"\banswer\s*(?:is|:|=)\s*\(?\s*([A-D])\b(?![a-z])", re.IGNORECASE)
_STANDALONE = re.compile(r"(?<![A-Za-z0-9])([A-D])(?![A-Za-z0-9])")
_ARTICLE_NEXT = re.compile(r"[ \t]{1,3}(?!(?:is|was|seems|looks|appears|would|should|must|and|or)\b)[a-z]")
_SENTENCE_END = ".!?:\n"


def _is_sentence_article(text: str, i: int) -> bool:
    """Whether the capital "A" at `i` opens a sentence and is followed by a lowercase word (an article)."""
    if not _ARTICLE_NEXT.match(text, i + 1):
        return False
    before = text[max(0, i - 8):i].rstrip(" \t")
    return not before or before[-1] in _SENTENCE_END


def answer_letter(completion: str) -> str | None:
    """The chosen option A-D: `"answer":"X"`, then `answer: X`, then the last standalone capital A-D.

    The last fallback is case-sensitive so that the article "a" is never read as option A, and skips a
    capital "A" that opens a sentence followed by a lowercase word ("A catalyst lowers ...").
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
    for m in reversed(list(_STANDALONE.finditer(text))):
        if not (m.group(1) == "A" and _is_sentence_article(text, m.start())):
            return m.group(1)
    return None

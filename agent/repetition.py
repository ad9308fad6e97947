"""Stop a small model that has started to loop ("the file the file the file ...").

`RepetitionGuard` watches streamed text and turns `looping` once an 8-word sequence has appeared
three times; `trim` cuts a finished text after the first occurrence of its first repeated
sequence. Used by QA answers and agent steps, instead of a repetition penalty (which would also
penalise the source words an answer must copy, and the JSON keys every tool call repeats).
"""

from __future__ import annotations

import re

REPEAT_NGRAM, REPEAT_TIMES = 8, 3


class RepetitionGuard:
    """Watches streamed text; `looping` once an 8-word sequence has appeared three times."""

    def __init__(self):
        self.text = ""
        self.looping = False

    def feed(self, piece: str) -> None:
        self.text += piece
        if not self.looping and piece and len(self.text) % 8 < len(piece) + 1:
            self.looping = self.loops(self.text)

    @staticmethod
    def loops(text: str) -> bool:
        words = text.split()
        seen: dict[tuple[str, ...], int] = {}
        for i in range(len(words) - REPEAT_NGRAM + 1):
            gram = tuple(words[i : i + REPEAT_NGRAM])
            seen[gram] = seen.get(gram, 0) + 1
            if seen[gram] >= REPEAT_TIMES:
                return True
        return False

    @staticmethod
    def trim(text: str) -> str:
        """The text up to the end of the first occurrence of the first repeated sequence."""
        words = list(re.finditer(r"\S+", text))
        first: dict[tuple[str, ...], int] = {}
        for i in range(len(words) - REPEAT_NGRAM + 1):
            gram = tuple(w.group(0) for w in words[i : i + REPEAT_NGRAM])
            if gram in first:
                return text[: words[i - 1].end()].rstrip() if i else ""
            first[gram] = i
        return text

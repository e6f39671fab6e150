"""Incremental detokenisation: text pieces that never split a character or leak a stop string.

SentencePiece byte-fallback pieces decode to U+FFFD until the last byte of a multi-byte character
arrives, so :class:`AnswerStream` holds back trailing replacement characters, trailing whitespace
and any tail that could be the start of a stop string, and releases them once the following
tokens settle the question. Concatenating every piece gives exactly :meth:`AnswerStream.text`.

Each token re-decodes only the tokens since the last one whose text was settled (a whole piece,
no U+FFFD), not the whole answer: the cost of a token does not grow with the answer's length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["AnswerStream"]

_REPLACEMENT = "\ufffd"
_WINDOW = 16  # tokens decoded again at most (about): a new anchor is looked for this often


class AnswerStream:
    """Turns answer token ids, one at a time, into safe text pieces.

    ``decode`` maps ids to text (special ids -> nothing). ``stop`` strings end the answer before
    the string. Leading and trailing whitespace of the answer is dropped.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        # the anchor: the last settled token; decode(ids) starts with decode(ids[: anchor + 1])
        self._anchor = -1
        self._settled = ""  # decode(ids[: anchor + 1])
        self._anchor_text = ""  # decode([ids[anchor]]) alone
        self._emitted = 0  # characters of the (stripped) text already handed out
        self._text = ""  # the current full text, leading whitespace stripped
        self.stopped = False  # a stop string was found

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    def push(self, token: int) -> str:
        """Add one answer token; return the text that became final (may be empty)."""
        if self.stopped:
            return ""
        self._ids.append(int(token))
        text = self._decoded().lstrip()
        cut = self._find_stop(text)
        if cut is not None:
            self.stopped = True
            self._text = text[:cut].rstrip()
            return self._release(len(self._text))
        self._text = text
        return self._release(self._safe_end(text))

    def finish(self) -> str:
        """The rest of the text once generation has ended (EOS, stop or max_length)."""
        self._text = self._text.rstrip()
        return self._release(len(self._text))

    def text(self) -> str:
        """The full answer so far (final after :meth:`finish`)."""
        return self._text

    def _decoded(self) -> str:
        """``decode(ids)``, decoding only the tokens from the anchor on; every ``_WINDOW`` tokens
        or so the last token becomes the anchor, when its text is settled."""
        ids, anchor = self._ids, self._anchor
        text = None
        if anchor >= 0:
            window = self._decode(ids[anchor:])  # the anchor's text first, as alone
            if window.startswith(self._anchor_text):
                text = self._settled + window[len(self._anchor_text) :]
        if text is None:
            text = self._decode(ids)
        if len(ids) - anchor > _WINDOW and not text.endswith(_REPLACEMENT):
            last = self._decode(ids[-1:])
            if _REPLACEMENT not in last:  # a whole piece, not a byte of a character
                self._anchor, self._settled, self._anchor_text = len(ids) - 1, text, last
        return text

    def _release(self, end: int) -> str:
        end = max(end, self._emitted)
        piece = self._text[self._emitted : end]
        self._emitted = end
        return piece

    def _find_stop(self, text: str) -> int | None:
        hits = [i for i in (text.find(s, max(0, self._emitted - len(s))) for s in self._stop) if i >= 0]
        return min(hits) if hits else None

    def _safe_end(self, text: str) -> int:
        end = len(text)
        for stop in self._stop:  # hold back a tail that may grow into a stop string
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    end = min(end, len(text) - n)
                    break
        # trailing whitespace may end the answer (then it is dropped); U+FFFD may be half a character
        while end > self._emitted and (text[end - 1] == _REPLACEMENT or text[end - 1].isspace()):
            end -= 1
        return end

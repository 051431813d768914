"""Generated tokens → text deltas for a stream, with ``stop`` sequences.

The text of a token depends on its neighbours (byte-level BPE splits characters
across tokens, SentencePiece drops a leading space alone), so each new token is
decoded with the few tokens before it and only the new, complete part is kept (the
incremental decoding of Hugging Face's text-generation-inference): an unfinished
character (U+FFFD at the end) waits for the next token, and a tail that may still
become a stop sequence is held back until it is settled.  Each token costs a
decode of a handful of tokens, not of the whole completion.
"""

from __future__ import annotations

from typing import Any


class TextStream:
    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.prefix_offset = 0  # ids[prefix_offset:read_offset] is context already turned into text
        self.read_offset = 0
        self.sent = 0  # characters of the decoded text already sent
        self.text = ""
        self.stopped = False

    def add(self, token: int) -> str:
        """The text that is now settled; sets ``stopped`` when a stop sequence appeared."""
        if self.stopped:
            return ""
        self.ids.append(token)
        self.text += self._decode_new()
        if self.stop:
            start = max(0, self.sent - max(len(s) for s in self.stop))
            found = [index for s in self.stop if (index := self.text.find(s, start)) >= 0]
            if found:
                self.stopped = True
                return self._send(min(found))
        return self._send(len(self.text) - self._stop_prefix())

    def _decode_new(self) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # nothing new yet, or a character that the next token completes
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return after[len(before):]

    def finish(self) -> str:
        """What was held back, once no token follows."""
        if self.stopped:
            return ""
        rest = self.tokenizer.decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        before = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        self.text += rest[len(before):]
        return self._send(len(self.text))

    def _send(self, upto: int) -> str:
        upto = max(upto, self.sent)
        delta, self.sent = self.text[self.sent:upto], upto
        if self.stopped:
            self.text = self.text[:upto]
        return delta

    def _stop_prefix(self) -> int:
        """How many trailing characters could still begin a stop sequence."""
        longest = 0
        for s in self.stop:
            for size in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:size]):
                    longest = size
                    break
        return longest

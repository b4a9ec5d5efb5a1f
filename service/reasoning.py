"""Chain of thought: the instruction the model gets, and the filter that hides its reasoning.

An L1 template with ``cot: visible`` or ``cot: hidden`` (see :mod:`service.prompts`) adds
:data:`COT_INSTRUCTION` to the system message: reason step by step, then give the final answer
after the marker ``Answer:``. With ``visible`` the client sees everything the model writes.
With ``hidden`` one :class:`HiddenReasoning` per choice sits between the engine and the client
and lets only the text after the first ``Answer:`` through::

    hidden = HiddenReasoning()
    for delta in engine_deltas:            # streaming
        send(hidden.feed(delta.text))
    send(hidden.finish())

    text = hidden.feed(full_text) + hidden.finish()   # non-streaming

The marker is matched exactly (case-sensitive), wherever the deltas split it. Whitespace right
after the marker is dropped. Fallback: when the model never writes the marker (a small model
that ignores the format, or ``max_tokens`` reached mid-reasoning), ``finish()`` returns all the
text held back, so the client never gets an empty answer.
"""

from __future__ import annotations

MARKER = "Answer:"

COT_INSTRUCTION = (
    "Think step by step: first write out your reasoning, then write a final line that starts with "
    f'"{MARKER}" followed by your answer.'
)


class HiddenReasoning:
    """Streaming filter for one choice: nothing before :attr:`MARKER`, everything after it."""

    MARKER = MARKER

    def __init__(self) -> None:
        self._held = ""  # the text before the marker, held back until the marker or the end
        self._scan_from = 0  # the marker cannot start before this index of _held
        self._passing = False  # the marker has been seen: text flows through
        self._stripping = True  # still dropping the whitespace right after the marker

    @property
    def answered(self) -> bool:
        """Whether the marker has been seen."""
        return self._passing

    def feed(self, text: str) -> str:
        """Take the next delta; return the text to send to the client now (maybe "")."""
        if not self._passing:
            self._held += text
            at = self._held.find(self.MARKER, self._scan_from)
            if at < 0:
                # Only the last len(MARKER) - 1 characters may begin a marker split across deltas.
                self._scan_from = max(0, len(self._held) - len(self.MARKER) + 1)
                return ""
            self._passing = True
            text = self._held[at + len(self.MARKER) :]
            self._held = ""
        if self._stripping:
            text = text.lstrip()
            self._stripping = not text
        return text

    def finish(self) -> str:
        """At the end of generation: everything held back if the marker never came, else ""."""
        if self._passing:
            return ""
        held, self._held = self._held, ""
        self._scan_from = 0
        return held

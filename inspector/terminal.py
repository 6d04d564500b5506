"""Text from the wire, made safe for a terminal: camera ids, frame ids and reasons are a sender's words.

A camera id such as ``"cam\\x1b]0;owned\\x07"`` must not retitle an operator's terminal, move its cursor or
hide the lines before it. :func:`printable` writes every control character (C0, DEL, C1) and the Unicode
bidirectional overrides as a visible escape (``\\x1b``, ``\\u202e``); everything else is kept.
"""

from __future__ import annotations

import re
from typing import Any

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(value: Any) -> str:
    """``str(value)`` with control and direction-override characters written as escapes."""
    return _UNSAFE.sub(_escape, str(value))

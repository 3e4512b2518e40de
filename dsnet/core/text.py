"""Text for people: a string cut to a width, and a value a client sent, quoted for an error message."""

from __future__ import annotations

QUOTE_LIMIT = 100  # characters of a client's value an error message repeats


def shortened(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` characters, the last of them an ellipsis when it was cut."""
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    return text if len(text) <= width else text[: width - 1] + "…"


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr`` of a value a client sent (a string as it is, anything else as its repr), cut to ``limit``
    characters: a message can name what it refuses without echoing a megabyte back."""
    return repr(shortened(value if isinstance(value, str) else repr(value), limit))

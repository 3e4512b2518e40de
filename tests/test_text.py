"""dsnet.core.text: what every error message that repeats a client's value uses, and the titles' cut."""

import pytest

from dsnet.core.text import QUOTE_LIMIT, quoted, shortened


def test_shortened_keeps_short_text_and_cuts_long_text_to_the_width_with_an_ellipsis():
    assert shortened("golf ball", 9) == "golf ball"
    assert shortened("golf ball", 5) == "golf…" and len(shortened("x" * 1000, 16)) == 16
    assert shortened("ab", 1) == "…"
    with pytest.raises(ValueError, match="at least 1"):
        shortened("ab", 0)


def test_quoted_repeats_at_most_the_limit_of_a_clients_value():
    assert quoted("golf ball") == "'golf ball'"
    assert quoted("x" * 1_000_000) == repr("x" * (QUOTE_LIMIT - 1) + "…") and QUOTE_LIMIT == 100
    assert quoted("y" * 61, limit=60) == repr("y" * 59 + "…")
    assert quoted(["../../etc/passwd"] * 50, limit=20) == repr(repr(["../../etc/passwd"])[:19] + "…")
    assert quoted(None) == "'None'" and quoted(1.5) == "'1.5'" and quoted("it's") == '"it\'s"'
    assert quoted("a\nb") == "'a\\nb'"  # one line in a log, whatever the client sent

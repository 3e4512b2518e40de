"""What the command lines share: argument types, and how a run that cannot go ahead ends.

The library code under each ``main`` raises typed errors (``ValueError`` and ``RuntimeError`` subclasses);
only ``main`` turns one into ``error: ...`` on stderr and exit status 2 (``refused``). Nothing here
imports more than the standard library: ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

REFUSED = 2  # the exit status of a run refused for the reason its message gives (argparse uses it too)


def positive(text: str) -> int:
    """An ``argparse`` type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def refused(reason: object) -> int:
    """Print ``error: REASON`` on stderr and return the exit status for it (``return refused(e)`` in a main)."""
    print(f"error: {reason}", file=sys.stderr)
    return REFUSED

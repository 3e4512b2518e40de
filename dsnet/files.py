"""Small file and process helpers shared by training and the app."""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (on this machine): leftovers of dead ones may be removed."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True

"""Small file and process helpers shared by training, the zoo and the app."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (on this machine): leftovers of dead ones may be removed."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed over ``path`` when the block ends without an
    error (after an fsync if asked), removed otherwise. A kill at any moment leaves the previous file
    intact; temporary files of writers that were killed mid-write are removed by the next write.
    The temporary name keeps the suffix (``savefig`` and friends pick the format from it)."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.tmp*"):
        pid = stale.name[len(f".{path.name}.tmp") :].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(proc, url: str, timeout: float, poll: float = 0.05) -> None:
    """Return once ``url`` answers HTTP 200; RuntimeError if ``proc`` (a Popen) exits or ``timeout`` passes."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it served {url}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not serve {url} within {timeout:.0f} s")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:  # refused, reset, timed out (urllib's URLError is an OSError)
            pass
        time.sleep(poll)


def cache_root() -> Path:
    """Where downloads and decoded-image caches go: ``$DSNET_CACHE``, else ``~/.cache/dsnet``."""
    return Path(os.environ.get("DSNET_CACHE") or Path.home() / ".cache" / "dsnet")

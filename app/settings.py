"""Serving limits, chosen on purpose, each with an environment variable (README lists them; why each is
what it is: docs/security.md, "Serving settings and limits")."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


class SettingsError(ValueError):
    """A DSNET_* setting that cannot be used; the message names it (``python app.py`` prints it and exits)."""


def env_number(name: str, default: float, kind=float):
    """A numeric setting from the environment (``default`` when unset or empty); SettingsError names a bad one."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return kind(default)
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class ServingSettings:
    """What one server allows; ``from_env`` reads each field from DSNET_<FIELD NAME>."""

    queue_size: int = 24  # DSNET_QUEUE_SIZE: waiting requests for everyone; more are refused as busy
    concurrency: int = 2  # DSNET_CONCURRENCY: requests computed at once (two cores)
    per_client: int = 3  # DSNET_PER_CLIENT: queued + running (+ stopping) requests per visitor (session and IP)
    running_per_client: int = 1  # DSNET_RUNNING_PER_CLIENT: explain requests a visitor has computing at once
    # DSNET_PAGES_PER_CLIENT: new pages (page loads, API calls without a session_hash) per visitor per cache_seconds
    pages_per_client: int = 60
    # DSNET_PAGE_STATES: pages (Gradio sessions) whose state the server keeps, the oldest dropped first (~110 KB each)
    page_states: int = 10_000
    head_timeout: float = 10.0  # DSNET_HEAD_TIMEOUT: seconds a connection may take to send its request head
    # DSNET_CONNECTIONS_PER_CLIENT: open connections per peer address (not behind a proxy: with
    # DSNET_TRUSTED_PROXIES > 0 every connection comes from the proxy, and the proxy bounds them)
    connections_per_client: int = 100
    body_timeout: float = 20.0  # DSNET_BODY_TIMEOUT: seconds a request body may stall (6x that in all)
    # DSNET_TRUSTED_PROXIES: X-Forwarded-For entries added by proxies we trust: 1 on a Space (its proxy
    # adds one), 0 elsewhere (a client could otherwise forge its address)
    trusted_proxies: int = 1 if os.environ.get("SPACE_ID") else 0
    upload_mb_per_client: int = 100  # DSNET_UPLOAD_MB_PER_CLIENT: upload bytes per visitor per cache_seconds
    upload_mb_total: int = 1000  # DSNET_UPLOAD_MB_TOTAL: upload bytes for everyone per cache_seconds
    # DSNET_UPLOAD_FILES_PER_CLIENT: images per visitor per cache_seconds (10x that for everyone)
    upload_files_per_client: int = 200
    # DSNET_UPLOAD_MP_PER_CLIENT: decoded megapixels of a visitor's images per cache_seconds: a small file
    # can declare a large image, and decoding costs memory by its pixels
    upload_mp_per_client: int = 400
    time_limit: float = 120.0  # DSNET_TIME_LIMIT: seconds per model for AblationCAM / ScoreCAM
    cache_seconds: int = 600  # DSNET_CACHE_SECONDS: outputs and unused uploads are deleted after this

    def __post_init__(self) -> None:
        """Every limit is a positive number (0 would refuse everyone); only trusted_proxies may be 0."""
        for f in fields(self):
            value, least = getattr(self, f.name), 0 if f.name == "trusted_proxies" else 1
            if not value >= least:
                raise SettingsError(f"DSNET_{f.name.upper()}={value!r}: it must be at least {least}")

    @classmethod
    def from_env(cls) -> ServingSettings:
        """Each field from DSNET_<FIELD NAME>, else its default; SettingsError for a value that is not a number
        or not in range."""
        defaults = cls()
        return cls(
            **{
                f.name: env_number(
                    f"DSNET_{f.name.upper()}", getattr(defaults, f.name), type(getattr(defaults, f.name))
                )
                for f in fields(cls)
            }
        )

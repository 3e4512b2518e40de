"""Serving: the queue, its guards and the HTTP gate around a built page (``launch``)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from dsnet.cam.images import MAX_BYTES
from dsnet.cam.service import grad_cam_ready
from dsnet.core.allocator import retain_freed_memory

from .components import RawImage
from .connections import install as install_connection_guard
from .gate import MAX_BODY_BYTES, PublicGate
from .gradio_internals import api_names, app_queue, known_event, known_stream
from .layout import BuiltApp
from .queue_guards import ClientLimit, shape_inputs
from .uploads import sweep_upload_folder
from .zerogpu import serving_device

log = logging.getLogger("dsnet.app")


def launch(app: BuiltApp, handle_sigterm: bool = False, **kwargs):
    """Serve a built page with its settings' limits; ``handle_sigterm`` (``python app.py``) cleans up on
    SIGTERM. Keyword arguments go to ``Blocks.launch``."""
    demo, settings = app.demo, app.settings
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    chosen = os.environ.get("DSNET_DEVICE")
    log.info(
        "serving on %s (%s)",
        serving_device(),
        f"DSNET_DEVICE={chosen}" if chosen else "the default: CUDA, else MPS, else CPU; DSNET_DEVICE chooses",
    )
    retain_freed_memory()
    # pytorch-grad-cam's import (seconds) in the background, so no visitor waits for it
    threading.Thread(target=grad_cam_ready, name="grad-cam-import", daemon=True).start()
    sweep_upload_folder()
    # api_open=False: no route runs a function outside the queue (/gradio_api/run/..., /gradio_api/api/...),
    # so the queue bound and the per-visitor limit hold for every caller.
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency, api_open=False)
    shape_inputs(app_queue(demo), (RawImage,))
    ClientLimit(settings.per_client, settings.trusted_proxies, app.handlers.runs, settings.running_per_client).install(
        app_queue(demo)
    )
    # X-Forwarded-For is read by app.gate.client_ip as DSNET_TRUSTED_PROXIES says, and only there: uvicorn
    # would otherwise take it from any loopback peer and rewrite the client's address before the gate.
    os.environ.setdefault("FORWARDED_ALLOW_IPS", "")
    if handle_sigterm:

        def stop(signum, frame):
            log.info("SIGTERM: closing and deleting uploads and outputs")
            demo.close()
            sweep_upload_folder(before=time.time() + 1)
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, stop)
    per_peer = None if settings.trusted_proxies else settings.connections_per_client
    install_connection_guard(settings.head_timeout, per_peer)
    kwargs.setdefault("enable_monitoring", False)
    # each page load and API call keeps ~110 KB of state (docs/serving.md); the oldest go first past this
    kwargs.setdefault("state_session_capacity", settings.page_states)
    gate = _middleware(
        PublicGate,
        max_body=MAX_BODY_BYTES,
        upload_budget=settings.upload_mb_per_client * 2**20,
        upload_total=settings.upload_mb_total * 2**20,
        window=settings.cache_seconds,
        trusted_proxies=settings.trusted_proxies,
        files_per_client=settings.upload_files_per_client,
        files_total=10 * settings.upload_files_per_client,
        body_timeout=settings.body_timeout,
        pages_per_client=settings.pages_per_client,
        runs=app.handlers.runs,
        api_names=api_names(demo),
        known_event=lambda event_id: known_event(app_queue(demo), event_id),
        known_stream=lambda session: known_stream(app_queue(demo), session),
    )
    app_kwargs = {"middleware": [gate], **kwargs.pop("app_kwargs", {})}
    # show_error=False: only gr.Error messages (written for visitors) reach a client, never an exception's text.
    return demo.launch(max_file_size=MAX_BYTES, show_error=False, app_kwargs=app_kwargs, **kwargs)


def _middleware(cls, **options):
    from starlette.middleware import Middleware

    return Middleware(cls, **options)

"""Every use of Gradio's internals, in one place.

The guards around the queue (``app.queue_guards``), the upload lifecycle (``app.uploads``) and the raw
input components (``app.components``) need a few things Gradio does not document: the queue object
behind ``Blocks.queue()``, the one door every queued request passes (``Queue.push``), the waiting
and running events, the set of files its upload route wrote, its upload folder, a function's input
components, and the front-end name of a component. They are reached only through the functions
below; ``tests/test_gradio_internals.py`` checks each against the installed Gradio and fails with the
name of what moved when the pinned version changes.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

PINNED = "6.31.0"  # requirements.txt; the test says when the installed Gradio differs

PushFn = Callable[..., Awaitable[tuple]]
# a wrapper gets the next push and the request: (push, body, request, username) -> push's result
PushWrapper = Callable[[PushFn, Any, Any, Any], Awaitable[tuple]]


def app_queue(demo):
    """The queue object of a Blocks whose ``queue()`` was called (``Blocks._queue``)."""
    return demo._queue


def queue_blocks(queue):
    """The Blocks a queue serves."""
    return queue.blocks


def api_names(demo) -> set[str]:
    """The names the app's functions answer under at /gradio_api/call/<name> (``api_name=``)."""
    return {
        fn.api_name
        for fn in demo.fns.values()
        if isinstance(fn.api_name, str) and fn.api_name and getattr(fn, "api_visibility", "public") != "private"
    }


def uploaded_files(demo) -> set[str]:
    """Gradio's record of the files its upload route wrote and no handler has used (``Blocks.upload_file_set``)."""
    return demo.upload_file_set


def upload_folder() -> Path:
    """Gradio's upload and cache folder (GRADIO_TEMP_DIR, read by ``gradio.utils.get_upload_folder``)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


def wrap_push(queue, wrapper: PushWrapper) -> None:
    """Put ``wrapper`` in front of ``Queue.push``: the one door of /queue/join and /call/<api> alike."""
    push = queue.push

    async def wrapped(body, request, username):
        return await wrapper(push, body, request, username)

    queue.push = wrapped


def endpoint_inputs(queue, body) -> list | None:
    """The input components of the function a queued request names (None: no such function)."""
    from gradio import route_utils

    try:
        return list(route_utils.get_fn(queue.blocks, None, body).inputs)
    except Exception:
        return None


def request_data(body) -> Any:
    """The input values a queued request carries (``PredictBody.data``)."""
    return body.data


def set_request_data(body, data: list) -> None:
    body.data = data


def waiting_events(queue) -> Iterator:
    """Events in the queue that no worker has started."""
    for event_queue in queue.event_queue_per_concurrency_id.values():
        yield from event_queue.queue


def running_events(queue) -> Iterator:
    """Events a worker is processing (until their asyncio task ends: a cancel ends it at once)."""
    for job in queue.active_jobs:
        yield from (job or [])


def pushed_event(queue, result: tuple):
    """The event a successful ``push`` queued, or None (push answers ``(ok, event_id, state)``)."""
    ok, event_id = result[0], result[1]
    if ok and isinstance(event_id, str):
        return queue.event_ids_to_events.get(event_id)
    return None


def known_event(queue, event_id: str) -> bool:
    """Whether ``GET /gradio_api/call/<name>/<event_id>`` finds messages to stream, found as that route
    finds them: the event's session while it is queued or running, else the session still listing it
    (until its completion is read), else the event id itself (a call sent without a session)."""
    event = queue.event_ids_to_events.get(event_id)
    if event is not None:
        session = event.session_hash
    else:
        session = next((s for s, ids in queue.pending_event_ids_session.items() if event_id in ids), event_id)
    return known_stream(queue, session)


def known_stream(queue, session: str) -> bool:
    """Whether ``GET /gradio_api/queue/data?session_hash=<session>`` finds messages to stream (else
    Gradio starts the event stream, then breaks it with a 404 raised inside)."""
    return session in queue.pending_messages_per_session


def event_session(event) -> str | None:
    """The session hash (one page load) an event came from."""
    return event.session_hash


def request_session(body) -> str | None:
    """The session hash a queued request names (``PredictBody.session_hash``)."""
    return body.session_hash


def set_event_ip(event, ip: str) -> None:
    """Remember on a queued event the address it came from (Gradio's Event has no such field)."""
    event.dsnet_client_ip = ip


def event_ip(event) -> str | None:
    """The address ``set_event_ip`` remembered (None for an event queued before the guard)."""
    return getattr(event, "dsnet_client_ip", None)


def hold_back_events(queue, held: Callable[[Any], bool], only: str | None = None) -> None:
    """Let the queue start no event for which ``held(event)`` is true; such events keep their places.
    ``only``: a concurrency id (``concurrency_id=`` of an event listener): the others are left alone.

    Wraps ``Queue.get_events`` (called by the processing loop under its lock, once per free worker):
    the held events are out of the lists while it picks, then back in their order.
    """
    get_events = queue.get_events

    def fair_get_events():
        lines = [q for cid, q in queue.event_queue_per_concurrency_id.items() if only is None or cid == only]
        before = {id(q): list(q.queue) for q in lines}
        for q in lines:
            q.queue[:] = [e for e in before[id(q)] if not held(e)]
        picked = None
        try:
            picked = get_events()
            return picked
        finally:  # every event back in its place, less those just started (none when get_events raised)
            started = {id(e) for e in (picked[0] if picked else [])}
            for q in lines:
                q.queue[:] = [e for e in before[id(q)] if id(e) not in started]

    queue.get_events = fair_get_events


def block_name(component_class: type) -> str:
    """The front-end component a Gradio component class renders as (its ``get_block_name``)."""
    gradio_base = next(c for c in component_class.__mro__ if c.__module__.startswith("gradio."))
    return gradio_base.__name__.lower()


def check() -> list[str]:
    """What this module relies on that the installed Gradio no longer has (empty: all there)."""
    import gradio
    from gradio import queueing, route_utils, utils
    from gradio.blocks import Blocks

    problems = []
    if gradio.__version__ != PINNED:
        problems.append(
            f"Gradio {gradio.__version__} is installed; app/gradio_internals.py was checked against "
            f"{PINNED}: re-check each function below, then update PINNED"
        )
    push = inspect.signature(queueing.Queue.push)
    if list(push.parameters) != ["self", "body", "request", "username"]:
        problems.append(f"Queue.push{push} changed (wrap_push passes body, request, username)")
    if not callable(getattr(queueing.Queue, "get_events", None)) or list(
        inspect.signature(queueing.Queue.get_events).parameters
    ) != ["self"]:
        problems.append("Queue.get_events() is gone or takes arguments (hold_back_events wraps it)")
    source = inspect.getsource(queueing.Queue)
    for name in (
        "event_queue_per_concurrency_id",
        "active_jobs",
        "event_ids_to_events",
        "self.get_events()",
        "pending_event_ids_session",  # known_event
        "pending_messages_per_session",  # known_event
    ):
        if name not in source:
            problems.append(f"Queue no longer uses {name}")
    from gradio.data_classes import PredictBody

    if "session_hash" not in PredictBody.model_fields:
        problems.append("PredictBody.session_hash is gone (request_session reads it)")
    if "self.session_hash" not in inspect.getsource(queueing.Event):
        problems.append("Event.session_hash is gone (event_session reads it)")
    if "self.upload_file_set" not in inspect.getsource(Blocks):
        problems.append("Blocks.upload_file_set is gone (uploaded_files reads it)")
    if "_queue" not in inspect.getsource(Blocks.queue):
        problems.append("Blocks.queue() no longer sets Blocks._queue (app_queue reads it)")
    if list(inspect.signature(route_utils.get_fn).parameters) != ["blocks", "api_name", "body"]:
        problems.append("route_utils.get_fn(blocks, api_name, body) changed (endpoint_inputs calls it)")
    if "state_session_capacity" not in inspect.signature(Blocks.launch).parameters:
        problems.append("Blocks.launch(state_session_capacity=) is gone (serve.launch passes DSNET_PAGE_STATES)")
    if not callable(getattr(utils, "get_upload_folder", None)):
        problems.append("gradio.utils.get_upload_folder is gone (upload_folder calls it)")
    return problems

"""Guards on the queue: every queued request has the same shape, and a visitor gets a fair share.

* ``shape_inputs``: missing inputs get defaults, extra ones are refused, an image payload that is not
  a recorded upload or a ``data:`` URL is emptied before Gradio looks at it.
* ``ClientLimit``: at most N requests per client (Gradio session, and client IP as a proxy forwards
  it) waiting, running or still computing after a cancel, on top of the queue bound for everyone
  (HTTP 429 at once); and at most M of its explain requests computing at once (the rest wait while
  other visitors' start).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import gradio_internals as gi
from .gate import client_ip
from .runs import RunRegistry
from .state import EXPLAIN_GROUP


def shape_inputs(queue, image_types: tuple[type, ...]) -> None:
    """Give every request the same shape before Gradio looks at it.

    * Raw HTTP callers may send only the first inputs (e.g. just the image): the rest get the
      components' defaults, as gradio_client fills them; more inputs than the endpoint has are
      refused. (Gradio would otherwise answer with an error that echoes every value, in full.)
    * An image payload that is not a file this server's upload route wrote loses its ``meta``, and a
      payload of the wrong type becomes an empty one: Gradio's own file handling never sees it, and
      ``Uploads.take`` gives the one refusal for every such case.
    """

    async def shaped_push(push, body, request, username):
        from fastapi import HTTPException

        inputs = gi.endpoint_inputs(queue, body)
        if inputs is None:
            raise HTTPException(404, "no such endpoint: see /gradio_api/info for the ones this app has")
        data = gi.request_data(body)
        if not isinstance(data, list) or len(data) > len(inputs):
            raise HTTPException(422, f"this endpoint takes a list of at most {len(inputs)} input values")
        data = data + [getattr(c, "value", None) for c in inputs[len(data) :]]
        uploaded = gi.uploaded_files(gi.queue_blocks(queue))
        for i, component in enumerate(inputs):
            if isinstance(component, image_types) and data[i] is not None:
                data[i] = _image_payload(data[i], uploaded)
        gi.set_request_data(body, data)
        return await push(body=body, request=request, username=username)

    gi.wrap_push(queue, shaped_push)


def _image_payload(value, uploaded: set) -> dict:
    if not isinstance(value, dict):
        return {"path": None, "url": None, "orig_name": "refused"}
    path, url = value.get("path"), value.get("url")
    if isinstance(path, str) and path in uploaded:
        return value
    return {"path": path if isinstance(path, str) else None, "url": url if isinstance(url, str) else None}


@dataclass
class ClientLimit:
    """Per visitor (session and client IP): at most ``per_client`` requests in the system (waiting, running,
    or still computing after a cancel: ``RunRegistry``), of which at most ``running_per_client`` explain
    requests compute at once; a visitor's further explain requests wait while other visitors' start."""

    per_client: int
    trusted_proxies: int = 0
    runs: RunRegistry = field(default_factory=RunRegistry)
    running_per_client: int = 1
    concurrency_id: str = EXPLAIN_GROUP

    def install(self, queue) -> None:
        async def limited_push(push, body, request, username):
            ip = client_ip(request, self.trusted_proxies)
            mine = self.requests(queue, ip, gi.request_session(body))
            if mine >= self.per_client:
                from fastapi import HTTPException

                raise HTTPException(
                    429,
                    f"You already have {mine} requests waiting or running; "
                    f"wait until one finishes (at most {self.per_client} per visitor).",
                )
            result = await push(body=body, request=request, username=username)
            event = gi.pushed_event(queue, result)
            if event is not None:
                gi.set_event_ip(event, ip)
            return result

        gi.wrap_push(queue, limited_push)
        gi.hold_back_events(
            queue,
            lambda event: self.running(queue, gi.event_ip(event), gi.event_session(event)) >= self.running_per_client,
            only=self.concurrency_id,
        )

    def running(self, queue, ip: str | None, session: str | None) -> int:
        """A visitor's requests that hold a worker or whose computation has not stopped yet."""
        started = sum(1 for ev in gi.running_events(queue) if _of(ev, ip, session))
        return max(started, self.runs.count(ip, session))

    def requests(self, queue, ip: str | None, session: str | None) -> int:
        """A visitor's requests in the system: waiting, running, or computing after a cancel."""
        return sum(1 for ev in gi.waiting_events(queue) if _of(ev, ip, session)) + self.running(queue, ip, session)


def _of(event, ip: str | None, session: str | None) -> bool:
    return (session is not None and gi.event_session(event) == session) or (ip is not None and gi.event_ip(event) == ip)

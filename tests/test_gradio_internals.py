"""app/gradio_internals.py against the installed Gradio: what the guards rely on is still there."""

from types import SimpleNamespace

import gradio as gr

from app import gradio_internals as gi


def test_the_installed_gradio_still_has_every_internal_the_app_uses():
    problems = gi.check()
    assert problems == [], "Gradio changed under app/gradio_internals.py:\n" + "\n".join(problems)


def test_the_installed_uvicorn_still_has_what_the_connection_guard_extends():
    from app import connections

    problems = connections.check()
    assert problems == [], "uvicorn changed under app/connections.py:\n" + "\n".join(problems)


def test_the_guarded_protocol_is_what_uvicorn_picks_for_auto():
    """``install`` registers the class uvicorn's Config loads for ``http="auto"`` (what Gradio starts)."""
    from uvicorn import config

    from app import connections

    before = config.HTTP_PROTOCOLS["auto"]
    try:
        guarded = connections.install(head_timeout=3.0, per_peer=5)
        from uvicorn.importer import import_from_string

        cls = import_from_string(config.HTTP_PROTOCOLS["auto"])
        assert cls is guarded and issubclass(cls, connections.ConnectionGuard)
        assert (cls.head_timeout, cls.per_peer) == (3.0, 5)
    finally:
        config.HTTP_PROTOCOLS["auto"] = before


def test_a_raw_component_renders_as_its_gradio_base():
    from app.components import RawCheckbox, RawImage, RawSlider

    assert [gi.block_name(c) for c in (RawImage, RawCheckbox, RawSlider)] == ["image", "checkbox", "slider"]
    assert RawImage().get_block_name() == gr.Image().get_block_name()


def test_held_back_events_keep_their_places_and_the_others_start():
    """The real get_events on a queue whose events belong to a busy and an idle visitor."""
    from gradio.queueing import Queue

    fn = SimpleNamespace(batch=False, max_batch_size=1)
    events = [SimpleNamespace(name=n, fn=fn, session_hash=n[0]) for n in ("a1", "a2", "b1", "a3", "b2")]
    line = SimpleNamespace(queue=list(events), concurrency_limit=None, current_concurrency=0)
    queue = SimpleNamespace(event_queue_per_concurrency_id={"explain": line})
    queue.get_events = Queue.get_events.__get__(queue)
    gi.hold_back_events(queue, lambda e: e.session_hash == "a")  # visitor a has a run on
    started, _, _ = queue.get_events()
    assert [e.name for e in started] == ["b1"]
    assert [e.name for e in line.queue] == ["a1", "a2", "a3", "b2"]
    queue.get_events()
    assert queue.get_events() is None and [e.name for e in line.queue] == ["a1", "a2", "a3"]


def test_no_component_of_the_page_has_server_functions():
    """The gate blocks /gradio_api/component_server (each call made a page state, uncounted); a component
    with server functions (e.g. gr.FileExplorer) would need it back."""
    from app import build_app

    built = build_app(None, "imagenette")
    assert [type(b).__name__ for b in built.demo.blocks.values() if getattr(b, "server_fns", None)] == []

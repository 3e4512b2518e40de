"""Resident memory of the app over many varied legal requests: allocator retention or a leak?

    python benchmarks/memory.py [--requests 100] [--passes 2] [--every 10] [--cheap 0]
                                [--variants default,glibc-default,arena2,tracemalloc] [--json runs/memory.json]

For each variant it starts its own server on 127.0.0.1 (this script with ``--serve``: the app in-process,
as ``python app.py`` builds and launches it, with the per-visitor limits raised), sends ``--requests``
varied legal requests one at a time over raw HTTP (``POST /gradio_api/call/explain``, then its event
stream), then the very same requests again (``--passes``), reads the server's VmRSS after every
``--every`` requests, and stops the server. Request ``i`` varies the method (every method but ScoreCAM),
the image (an example by id, or an upload: a photo of the shared data's imagenet-samples scaled 1x to
8x and saved as JPEG), the faithfulness numbers (on / off) and the target (top-1, true class, one class).

``--cheap N`` then sends N requests that are refused before any model runs (an unknown example id):
each is a new Gradio session all the same, so their slope is what one session keeps.

At every checkpoint the server also reports (SIGUSR1) glibc's ``mallinfo2`` (bytes in use and free bytes
held by the heap), its thread count, Python's object count and the sizes of Gradio's per-request
records; at a few checkpoints (after the first ``--every`` requests, after pass 1, after the passes, after
the refused requests) the object types that grew since the last of them, and in the ``tracemalloc`` variant
the allocation sites that grew over the refused requests (traced from the end of the passes on: traced,
a request with the faithfulness numbers takes over a minute instead of seconds). Last, it calls
``malloc_trim(0)`` and reads VmRSS again: what that returns to the system was free heap the allocator
kept, not live objects.

The variants: ``default`` (the app as it serves: ``dsnet.core.allocator.retain_freed_memory``),
``glibc-default`` (that call skipped: glibc's adaptive thresholds), ``arena2`` (the app with
``MALLOC_ARENA_MAX=2``), ``glibc-arena2`` (both), ``tracemalloc`` (the app, with Python's allocation
tracing over the refused requests: needs ``--cheap``). The JSON (``--json``; default ``runs/memory-<date>.json``)
holds the commit, date, command, the request plan and each variant's series.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import io
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("DSNET_DATA", ROOT.parent / "shared" / "data"))

METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "ablationcam")  # no scorecam
SCALES = (1, 2, 4, 8)  # uploads: a sample photo (at most 716 px wide) scaled up, 0.01 to 12 MP
CLASSES = (
    "tench",
    "English springer",
    "cassette player",
    "chain saw",
    "church",
    "French horn",
    "garbage truck",
    "gas pump",
    "golf ball",
    "parachute",
)  # the imagenette zoo's
VARIANTS = {  # name: (environment added, skip retain_freed_memory, tracemalloc)
    "default": ({}, False, False),
    "glibc-default": ({}, True, False),
    "arena2": ({"MALLOC_ARENA_MAX": "2"}, False, False),
    "glibc-arena2": ({"MALLOC_ARENA_MAX": "2"}, True, False),
    "tracemalloc": ({}, False, True),
}


# -- the server side (``--serve``): the app in this process, reporting on SIGUSR1 ------------------------------
class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc():
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _Mallinfo2
        return libc
    except (OSError, AttributeError):
        return None


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _mb(n: float) -> float:
    return round(n / 2**20, 1)


class Probe:
    """What the server says about its memory, written as JSON to ``folder/probe-<n>.json`` on SIGUSR1
    (``folder/ask.json`` says which checkpoint, whether to keep the type counts and snapshot, and whether
    to trim)."""

    def __init__(self, folder: Path, demo) -> None:
        self.folder, self.demo, self.libc = folder, demo, _libc()
        self.kept_types = None
        self.kept_snapshot = None

    def __call__(self, signum=None, frame=None) -> None:
        import gc
        import tracemalloc
        from collections import Counter

        ask = json.loads((self.folder / "ask.json").read_text())
        out = {"n": ask["n"], "rss_mb": _mb(_status("VmRSS") * 1024), "threads": _status("Threads")}
        if self.libc is not None:
            m = self.libc.mallinfo2()
            out["malloc"] = {
                "heap_mb": _mb(m.arena),
                "mmapped_mb": _mb(m.hblkhd),
                "in_use_mb": _mb(m.uordblks),
                "free_held_mb": _mb(m.fordblks),
                "top_releasable_mb": _mb(m.keepcost),
            }
        out["gradio"] = self.gradio_records()
        gc.collect()
        objects = gc.get_objects()
        out["python_objects"] = len(objects)
        if ask.get("types"):
            types = Counter(type(o).__qualname__ for o in objects)
            if self.kept_types is not None:
                grown = (types - self.kept_types).most_common(12)
                out["types_grown_since_last_kept"] = {name: n for name, n in grown}
            self.kept_types = types
        del objects
        if ask.get("trace") and not tracemalloc.is_tracing():  # from here on: start-up's imports are not traced
            tracemalloc.start(6)
            self.kept_snapshot = None
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            out["tracemalloc"] = {"current_mb": _mb(current), "peak_mb": _mb(peak)}
            if ask.get("types"):
                snapshot = tracemalloc.take_snapshot().filter_traces(
                    [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
                )
                if self.kept_snapshot is not None:
                    out["sites_grown_since_last_kept"] = [
                        {
                            "kb": round(s.size_diff / 1024, 1),
                            "blocks": s.count_diff,
                            "where": [f"{_short(f.filename)}:{f.lineno}" for f in s.traceback[-4:]][::-1],
                        }
                        for s in snapshot.compare_to(self.kept_snapshot, "traceback")[:12]
                    ]
                self.kept_snapshot = snapshot
        if ask.get("trim") and self.libc is not None:
            self.libc.malloc_trim(0)
            out["after_malloc_trim_rss_mb"] = _mb(_status("VmRSS") * 1024)
        path = self.folder / f"probe-{ask['n']}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out))
        tmp.rename(path)

    def gradio_records(self) -> dict:
        """Sizes of what Gradio keeps per request or file (a leak there grows these without bound)."""
        demo = self.demo
        queue = getattr(demo, "_queue", None)
        holder = getattr(demo, "state_holder", None)
        out = {
            "session_states": len(getattr(holder, "session_data", ())),
            "block_temp_files": sum(len(getattr(b, "temp_files", ())) for b in demo.blocks.values()),
            "upload_file_set": len(getattr(demo, "upload_file_set", ())),
        }
        for name in (
            "event_ids_to_events",
            "pending_messages_per_session",
            "pending_event_ids_session",
            "event_analytics",
        ):
            value = getattr(queue, name, None)
            if value is not None:
                out[name] = len(value)
        return out


def _short(filename: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def serve(variant: str, port: int, folder: Path) -> None:
    """The app as ``python app.py`` starts it, plus the probe (and the variant's change)."""
    _, skip_retain, _ = VARIANTS[variant]
    os.chdir(ROOT)
    import app.serve  # app's __init__ sets GRADIO_TEMP_DIR when unset, before Gradio is imported

    if skip_retain:  # the experiment only: glibc's own thresholds
        app.serve.retain_freed_memory = lambda *a, **k: False
    from app import build_app, launch

    built = build_app(None, "imagenette")
    signal.signal(signal.SIGUSR1, Probe(folder, built.demo))
    launch(built, handle_sigterm=True, server_name="127.0.0.1", server_port=port, quiet=True)


# -- the client side: the plan, the requests, the checkpoints ----------------------------------------------------
def request_plan(n: int, examples: list[str], samples: list[Path], seed: int = 0) -> list[dict]:
    """``n`` varied legal requests, the same for every variant (seeded)."""
    rng = random.Random(seed)
    plan = []
    for i in range(n):
        spec = {
            "method": METHODS[i % len(METHODS)],
            "metrics": (i // len(METHODS)) % 2 == 1,
            "target": "each model's top-1",
            "class_name": "",
        }
        if i % 2 == 0:
            spec["example"] = examples[(i // 2) % len(examples)]
            if i % 10 == 4:
                spec["target"] = "the true class"
        else:
            spec["upload"] = rng.choice(samples).name
            spec["scale"] = SCALES[(i // 2) % len(SCALES)]
        if i % 10 == 9:
            spec["target"], spec["class_name"] = "one class for all", CLASSES[(i // 10) % len(CLASSES)]
        plan.append(spec)
    return plan


def upload_bytes(name: str, scale: int, cache: dict) -> bytes:
    key = (name, scale)
    if key not in cache:
        from PIL import Image

        with Image.open(DATA / "imagenet-samples" / name) as im:
            im = im.convert("RGB")
            if scale != 1:
                im = im.resize((im.width * scale, im.height * scale), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90)
        cache[key] = buf.getvalue()
    return cache[key]


def explain(client, url: str, spec: dict, visitor: str, cache: dict, timeout: float) -> str:
    """One request; its last event ("complete", "error") or the HTTP status that refused it."""
    headers = {"X-Forwarded-For": visitor}
    image = None
    if "upload" in spec:
        data = upload_bytes(spec["upload"], spec["scale"], cache)
        up = client.post(
            url + "gradio_api/upload", files={"files": ("photo.jpg", data, "image/jpeg")}, headers=headers, timeout=60
        )
        if up.status_code != 200:
            return f"upload http {up.status_code}"
        image = {"path": up.json()[0], "meta": {"_type": "gradio.FileData"}}
    body = {
        "data": [
            image,
            "imagenette",
            spec["method"],
            spec["target"],
            spec["class_name"],
            0.5,
            spec["metrics"],
            spec.get("example", ""),
        ]
    }
    r = client.post(url + "gradio_api/call/explain", json=body, headers=headers, timeout=60)
    if r.status_code != 200:
        return f"http {r.status_code}"
    stream = client.get(f"{url}gradio_api/call/explain/{r.json()['event_id']}", timeout=timeout).text
    events = [line.removeprefix("event: ") for line in stream.splitlines() if line.startswith("event: ")]
    return events[-1] if events else "no event"


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def ask_probe(
    proc, folder: Path, n: int, types: bool = False, trim: bool = False, trace: bool = False, timeout: float = 300
) -> dict:
    (folder / "ask.json").write_text(json.dumps({"n": n, "types": types, "trim": trim, "trace": trace}))
    started = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    path = folder / f"probe-{n}.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            return {"n": n, "error": "the server did not answer the probe"}
        time.sleep(0.1)
    return {**json.loads(path.read_text()), "probe_seconds": round(time.monotonic() - started, 1)}


def refused(client, url: str, visitor: str) -> str:
    """A cheap request that no model runs for (an unknown example id): Gradio still makes it a session."""
    body = {"data": [None, "imagenette", "gradcam", "each model's top-1", "", 0.5, False, "no-such-example"]}
    r = client.post(url + "gradio_api/call/explain", json=body, headers={"X-Forwarded-For": visitor}, timeout=60)
    if r.status_code != 200:
        return f"http {r.status_code}"
    stream = client.get(f"{url}gradio_api/call/explain/{r.json()['event_id']}", timeout=60).text
    return "error" if "unknown example" in stream else "unexpected"


def run_variant(variant: str, plan: list[dict], passes: int, every: int, timeout: float, cheap: int = 0) -> dict:
    import httpx

    from dsnet.core.files import free_port, wait_until_serving

    extra_env, _, trace = VARIANTS[variant]
    with tempfile.TemporaryDirectory(prefix="dsnet-memory-") as tmp:
        folder = Path(tmp)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DSNET_", "GRADIO_", "MALLOC_"))}
        env.update(
            {
                "GRADIO_TEMP_DIR": str(folder / "gradio"),
                "GRADIO_ANALYTICS_ENABLED": "False",
                "PYTHONUNBUFFERED": "1",
                "DSNET_TRUSTED_PROXIES": "1",
                "DSNET_PER_CLIENT": "1000",
                "DSNET_RUNNING_PER_CLIENT": "1000",
                **extra_env,
            }
        )
        log = folder / "server.log"
        started = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", variant, "--port", str(port), "--probe-dir", str(folder)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_until_serving(proc, url, 300, poll=0.5)
            series = [{"requests": 0, "rss_mb": rss_mb(proc.pid), "probe": ask_probe(proc, folder, 0, types=True)}]
            outcomes: dict[str, int] = {}
            cache: dict = {}
            done = 0
            with httpx.Client() as client:
                for _ in range(passes):
                    for spec in plan:
                        outcome = explain(client, url, spec, f"198.18.{done // 250}.{done % 250 + 1}", cache, timeout)
                        outcomes[outcome] = outcomes.get(outcome, 0) + 1
                        done += 1
                        if done % every == 0:
                            keep = done in (every, len(plan), passes * len(plan))
                            series.append(
                                {
                                    "requests": done,
                                    "rss_mb": rss_mb(proc.pid),
                                    "seconds": round(time.monotonic() - started),
                                    "probe": ask_probe(
                                        proc, folder, done, types=keep, trace=trace and done == passes * len(plan)
                                    ),
                                }
                            )
                            print(f"{variant}: {done} requests, RSS {series[-1]['rss_mb']} MB", flush=True)
                cheap_series, step = [], max(1, cheap // 10)
                for k in range(1, cheap + 1):  # new sessions that compute nothing
                    outcome = refused(client, url, f"198.19.{k // 250}.{k % 250 + 1}")
                    outcomes["cheap " + outcome] = outcomes.get("cheap " + outcome, 0) + 1
                    if k % step == 0 or k == cheap:
                        keep = k == cheap
                        cheap_series.append(
                            {
                                "cheap_requests": k,
                                "rss_mb": rss_mb(proc.pid),
                                "probe": ask_probe(proc, folder, done + k, types=keep),
                            }
                        )
                        print(
                            f"{variant}: {k} refused requests after the passes, RSS {cheap_series[-1]['rss_mb']} MB",
                            flush=True,
                        )
            final = ask_probe(proc, folder, done + cheap + 1, trim=True)
            return {
                "env": extra_env,
                "seconds": round(time.monotonic() - started),
                "outcomes": outcomes,
                "series": series,
                "cheap_series": cheap_series,
                "after_malloc_trim": final,
            }
        except Exception as e:  # the log says why; the other variants still run
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            return {"env": extra_env, "error": f"{type(e).__name__}: {e}", "log_tail": tail}
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def example_ids() -> list[str]:
    """The shipped examples' ids (file stems: what the API's /examples lists), without importing the app."""
    return sorted(p.stem for p in (ROOT / "app" / "examples").rglob("*.JPEG"))


def summary(result: dict, n: int) -> dict:
    """RSS after warm-up (first checkpoint), after pass 1 and at the end; growth in each pass."""
    if "series" not in result:
        return {}
    rss = {s["requests"]: s["rss_mb"] for s in result["series"]}
    first = min(k for k in rss if k > 0)
    last = max(rss)
    out = {
        "start_mb": rss[0],
        "after_first_checkpoint_mb": rss[first],
        "after_pass_1_mb": rss.get(n),
        "end_mb": rss[last],
        "after_malloc_trim_mb": result["after_malloc_trim"].get("after_malloc_trim_rss_mb"),
    }
    if rss.get(n) is not None:
        out["growth_pass_1_mb"] = round(rss[n] - rss[first], 1)
        out["growth_later_passes_mb"] = round(rss[last] - rss[n], 1)
    cheap = result.get("cheap_series") or []
    if cheap:  # the refused requests: what one new Gradio session keeps
        k = cheap[-1]["cheap_requests"]
        before, after = result["series"][-1]["probe"], cheap[-1]["probe"]
        out["refused_requests"] = k
        out["rss_kb_per_refused_request"] = round((cheap[-1]["rss_mb"] - rss[last]) * 1024 / k, 1)
        if "malloc" in before and "malloc" in after:
            grown = after["malloc"]["in_use_mb"] - before["malloc"]["in_use_mb"]
            out["heap_in_use_kb_per_refused_request"] = round(grown * 1024 / k, 1)
        out["session_states"] = after.get("gradio", {}).get("session_states")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=100, help="distinct requests in one pass")
    p.add_argument("--passes", type=int, default=2, help="the same requests again this many times in all")
    p.add_argument("--every", type=int, default=10, help="a checkpoint after this many requests")
    p.add_argument(
        "--variants",
        default="default,glibc-default,arena2,tracemalloc",
        help=f"comma-separated, of {', '.join(VARIANTS)}",
    )
    p.add_argument(
        "--cheap",
        type=int,
        default=0,
        help="then this many requests refused before any model runs (an unknown example id): each a new Gradio session",
    )
    p.add_argument("--timeout", type=float, default=600, help="seconds one request may take")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="default: runs/memory-<UTC date and time>.json")
    p.add_argument("--serve", choices=list(VARIANTS), help=argparse.SUPPRESS)  # the server, started by this script
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--probe-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.probe_dir)
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if not (DATA / "imagenet-samples").is_dir():
        p.error(f"the shared data is missing at {DATA} (set DSNET_DATA)")
    samples = sorted((DATA / "imagenet-samples").glob("*.JPEG"))
    plan = request_plan(args.requests, example_ids(), samples, args.seed)
    from dsnet.core.provenance import artifact_header

    record = {
        **artifact_header(argv, "benchmarks/memory.py"),
        "what": "VmRSS of the server after every checkpoint of sequential varied legal /explain requests "
        "(the same plan repeated in later passes), per allocator variant",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "requests": args.requests,
        "passes": args.passes,
        "every": args.every,
        "cheap": args.cheap,
        "plan": plan,
        "variants": {},
    }
    for variant in variants:
        print(f"{variant}: starting", flush=True)
        result = run_variant(variant, plan, args.passes, args.every, args.timeout, args.cheap)
        result["summary"] = summary(result, args.requests)
        record["variants"][variant] = result
        print(f"{variant}: {result.get('error') or result['summary']}", flush=True)
    record["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    path = args.json or ROOT / "runs" / f"memory-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

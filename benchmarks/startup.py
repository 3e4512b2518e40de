"""How long ``python app.py`` takes until it serves, and what loading the models costs on first use.

    python benchmarks/startup.py [--runs 3] [--json docs/startup.json]

Each run starts ``python app.py`` from the repository root with no DSNET_* / GRADIO_* settings
(only GRADIO_SERVER_NAME/PORT, on a free port), polls ``/`` until HTTP 200 and records the seconds
since the process was started and its resident memory then. Then, in a fresh process, it times what
the first request adds: loading and verifying the three imagenette models (``load_available``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dsnet.core.files import free_port, wait_until_serving  # noqa: E402
from dsnet.core.provenance import revision  # noqa: E402


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSNET_", "GRADIO_"))}
    env.update(extra)
    return env


def one_run(timeout: float) -> dict:
    port = free_port()
    env = clean_env(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        try:
            wait_until_serving(proc, f"http://127.0.0.1:{port}/", timeout)
        except RuntimeError as e:
            raise RuntimeError(f"{e}:\n{proc.stdout.read() if proc.poll() is not None else ''}") from None
        seconds = time.perf_counter() - started
        return {"seconds": round(seconds, 2), "rss_mb": round(rss_mb(proc.pid) or 0, 1) or None}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


FIRST_USE = """
import json, time
t0 = time.perf_counter()
from dsnet.zoo.loader import load_available
t1 = time.perf_counter()
models, missing = load_available("imagenette")
t2 = time.perf_counter()
print(json.dumps({"import_seconds": round(t1 - t0, 2), "load_seconds": round(t2 - t1, 2),
                  "models": [m.name for m in models], "device": models[0].device.type if models else None,
                  "missing": sorted(missing)}))
"""


def first_use() -> dict:
    r = subprocess.run(
        [sys.executable, "-c", FIRST_USE],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--json", type=Path, help="write the measurement here (e.g. docs/startup.json)")
    args = p.parse_args(argv)
    runs = []
    for i in range(args.runs):
        runs.append(one_run(args.timeout))
        print(f"run {i + 1}: serving after {runs[-1]['seconds']:.2f} s, RSS {runs[-1]['rss_mb']} MB", flush=True)
    load = first_use()
    print(
        f"first use: loading + verifying {', '.join(load['models'])} takes {load['load_seconds']:.2f} s "
        f"(after {load['import_seconds']:.2f} s of imports) on {load['device']}"
    )
    median = statistics.median(r["seconds"] for r in runs)
    print(f"python app.py serves after {median:.2f} s (median of {len(runs)})")
    if args.json:
        rev = revision(ROOT)
        commit = rev.commit
        dirty = rev.dirty
        record = {
            "command": "python benchmarks/startup.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "what": "seconds from starting `python app.py` (repo root, no DSNET_/GRADIO_ settings) until GET / "
            "returns 200; RSS of that process then; first_use: loading the imagenette zoo in a fresh process",
            "commit": commit,
            "local_changes": dirty,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg_1min_at_end": round(os.getloadavg()[0], 2),  # other work on the machine slows start-up
            "median_seconds": median,
            "runs": runs,
            "first_use": load,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Every command line answers --help without importing what it only needs to run (seconds each).

The times themselves are measured side by side in benchmarks/cli_help.py (docs/cli-help.json)."""

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("cli_help", ROOT / "benchmarks" / "cli_help.py")
cli_help = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli_help)

# Runs a command's --help in this process, then lists the top-level modules it imported.
PROBE = """
import contextlib, io, json, runpy, sys
args = sys.argv[1:]
sys.argv = [args[-1], "--help"]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        if args[0].endswith(".py"):
            runpy.run_path(args[0], run_name="__main__")
        else:
            runpy.run_module(args[1], run_name="__main__")
    except SystemExit as e:
        code = e.code
print(json.dumps({"code": code, "help": out.getvalue(), "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


@pytest.mark.parametrize("name", list(cli_help.COMMANDS))
def test_help_answers_without_the_slow_imports(name):
    command, may_import_torch = cli_help.COMMANDS[name]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *command], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] in (0, None) and result["help"].startswith("usage:")
    slow = sorted(set(result["modules"]) & set(cli_help.SLOW_TO_IMPORT + (() if may_import_torch else ("torch",))))
    assert not slow, f"{name} --help imports {slow}"


def test_a_refused_run_says_why_on_stderr_and_exits_2(capsys):
    import argparse

    from dsnet.evidence.cli import REFUSED, positive, refused

    assert refused(ValueError("no model of zoo 'x' is available")) == REFUSED == 2
    assert capsys.readouterr() == ("", "error: no model of zoo 'x' is available\n")
    assert positive("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="at least 1, got 0"):
        positive("0")


def test_library_code_raises_and_only_the_commands_exit():
    """Below ``main`` the library raises typed errors; ``SystemExit`` is only ``raise SystemExit(main())``."""
    import re

    for path in sorted((ROOT / "dsnet").rglob("*.py")):
        if "models" in path.relative_to(ROOT / "dsnet").parts:
            continue  # its own engineer's
        text = path.read_text()
        exits = re.findall(r"(?m)^.*\b(?:SystemExit|sys\.exit)\b.*$", text)
        assert all(re.fullmatch(r"\s*(?:raise SystemExit|sys\.exit)\(main\(\)\)", line) for line in exits), path
        assert not re.search(r"(?m)^\s*assert\b", text), f"{path}: an assert checks nothing under python -O"

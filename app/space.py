"""Deploy the app to a Hugging Face Space: ``python -m app.space deploy USER/NAME [--dry-run]``.

A plain ``git push`` of this repository to a Space is refused: the Hub's pre-receive hook rejects
binary files (the safetensors weights, the PNGs) that are not stored through its large-file storage
(Xet/LFS), and this repository commits them as plain git objects. The deploy therefore uploads
through ``huggingface_hub``'s API, which sends every binary through the Hub's large-file storage,
and it uploads an explicit allow-list only (the app, the ``dsnet`` package, the manifest and the
weights it ships, requirements, README with its front matter, a licence), never tests, runs,
caches or secrets.

``--dry-run`` needs no network and no token. It prints the exact files and sizes and refuses, with
every problem listed, when: the README front matter does not parse or does not name ``app.py`` with
the Gradio SDK; its ``sdk_version`` differs from the gradio pin in requirements.txt; its
``python_version`` is missing, unquoted or outside ``requires-python``; a shipped weight is missing
or does not verify against ``checkpoints/manifest.json`` (``dsnet.zoo.weights.verify``, the loader's own
check); a secret (``.env``, keys, a Hub token in a file) lies in the folder; the total is too big.
The real deploy runs the same checks first, then creates the Space (Gradio SDK, hardware) and
uploads the files in one commit. The token comes from ``HF_TOKEN`` or ``hf auth login``, never from
a file here.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from app.evidence import FILES as EVIDENCE_FILES
from dsnet.core.provenance import revision
from dsnet.zoo.manifest import load_manifest
from dsnet.zoo.weights import ChecksumError, verify

ROOT = Path(__file__).resolve().parent.parent

# The allow-list: exactly these files (when present) ...
ALLOW_FILES = (
    "app.py",
    "requirements.txt",
    "README.md",
    "checkpoints/manifest.json",
    "docs/screenshot.png",
    "docs/screenshot-phone.png",
    "docs/figure4-imagenette.png",
    "docs/figure5-imagenette.png",  # the pictures README shows on the Space's page
    "LICENSE",
    "LICENSE.md",
    "LICENSE.txt",
    "LICENCE",
    "LICENCE.md",
    "LICENCE.txt",
    *EVIDENCE_FILES,
)  # the saved measurements the page's evidence section shows
# ... these patterns (``*`` stays inside one folder, ``**`` crosses folders) ...
ALLOW_PATTERNS = (
    "app/*.py",
    "dsnet/*.py",
    "dsnet/core/*.py",
    "dsnet/models/*.py",
    "dsnet/data/*.py",
    "dsnet/zoo/*.py",
    "dsnet/cam/*.py",
    "docs/*.md",  # README's links to the docs work on the Space's page too
    "app/examples/**.jpg",
    "app/examples/**.jpeg",
    "app/examples/**.png",
    "app/examples/**.webp",
    "app/examples/**.JPEG",
    "app/examples/**.JPG",
    "app/examples/**.PNG",
    "app/examples/**.txt",
    "app/examples/**.md",
    "app/examples/**.json",
    "app/examples/**.csv",
)
# The deploy tooling itself stays here; dsnet.evidence (training, evaluation) is not on the list.
NOT_UPLOADED = ("app/space.py",)
# ... and the weight files the manifest ships (``sources.local`` under checkpoints/, verified).
REQUIRED_FILES = ("app.py", "requirements.txt", "README.md", "checkpoints/manifest.json")

# Names that hold secrets: refused anywhere in the folder being deployed (not only in the upload).
SECRET_PATTERNS = (
    ".env",
    ".env.*",
    "*.env",
    ".netrc",
    ".git-credentials",
    ".pypirc",
    ".npmrc",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "credentials",
    "credentials.*",
    "secrets.*",
    "*.secret",
    "token",
    "*.token",
)
NOT_SECRETS = ("*.example", "*.sample", "*.template", "*.pub")
TOKEN_RE = re.compile(rb"\bhf_[A-Za-z0-9]{30,}\b")  # a Hugging Face access token in a shipped text file
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "node_modules", ".venv", "venv"}
MAX_TOTAL_MB = 1024  # a Space repository is meant to hold the app, not data sets
LARGE_FILE_MB = 10  # noted: goes through the Hub's large-file storage (it is binary anyway)
try:  # the hardware names the installed huggingface_hub knows
    from huggingface_hub import SpaceHardware

    HARDWARE = tuple(h.value for h in SpaceHardware)
except ImportError:  # pragma: no cover
    HARDWARE = (
        "cpu-basic",
        "cpu-upgrade",
        "zero-a10g",
        "t4-small",
        "t4-medium",
        "l4x1",
        "l4x4",
        "a10g-small",
        "a10g-large",
        "a100-large",
    )


class DeployError(RuntimeError):
    """A deploy that cannot (or must not) go ahead; the message says why and what to do."""


@dataclass
class Plan:
    """What a deploy would upload, and every problem that refuses it."""

    root: Path
    files: dict[str, int] = field(default_factory=dict)  # path in the Space -> bytes
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    front_matter: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.files.values())

    @property
    def ok(self) -> bool:
        return not self.problems


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def allowed(path: str) -> bool:
    """Whether a repository path is on the allow-list (weights are added from the manifest)."""
    if path in ALLOW_FILES:
        return True
    if path in NOT_UPLOADED:
        return False
    for pattern in ALLOW_PATTERNS:
        # fnmatch's * crosses "/", so "app/*.py" must not match app/sub/x.py: compare the depth too.
        if fnmatch.fnmatchcase(path, pattern) and ("**" in pattern or path.count("/") == pattern.count("/")):
            return True
    return False


def is_secret(name: str) -> bool:
    return _matches(name, SECRET_PATTERNS) and not _matches(name, NOT_SECRETS)


# ---------------------------------------------------------------------------------------- parsing


def front_matter(readme: Path) -> dict:
    """The YAML front matter of a README (``---`` lines); raises ValueError with the reason."""
    text = readme.read_text(encoding="utf-8")
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise ValueError(f"{readme.name} does not start with a front matter block (a line '---')")
    try:
        end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
    except StopIteration:
        raise ValueError(f"{readme.name}: the front matter block is not closed by a line '---'") from None
    block = "\n".join(lines[1:end])
    try:
        import yaml
    except ImportError:  # pragma: no cover - gradio depends on PyYAML; a tiny parser for flat keys otherwise
        return _flat_yaml(block)
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as e:
        raise ValueError(f"{readme.name}: the front matter is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{readme.name}: the front matter is not a mapping of keys to values")
    return data


def _flat_yaml(block: str) -> dict:  # pragma: no cover - used only without PyYAML
    data: dict = {}
    for n, line in enumerate(block.splitlines(), 2):
        if not line.strip() or line.lstrip().startswith("#") or line.startswith((" ", "-")):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"README.md line {n}: expected 'key: value', got {line!r}")
        value = value.split(" #")[0].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            data[key.strip()] = value[1:-1]
        elif re.fullmatch(r"-?\d+(\.\d+)?", value):
            data[key.strip()] = float(value) if "." in value else int(value)
        else:
            data[key.strip()] = {"true": True, "false": False}.get(value.lower(), value)
    return data


def requirement_pins(path: Path) -> dict[str, str]:
    """``name -> version`` for ``name==version`` lines; other lines map to "" (present, not pinned)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(==\s*([^\s;,]+))?", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(3) or ""
    return pins


def requires_python(pyproject: Path) -> str | None:
    if not pyproject.is_file():
        return None
    m = re.search(r'^requires-python\s*=\s*"([^"]+)"', pyproject.read_text(), re.M)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------- checks


def _check_front_matter(plan: Plan, hardware: str | None) -> None:
    root = plan.root
    try:
        fm = front_matter(root / "README.md")
    except (OSError, ValueError) as e:
        plan.problems.append(f"front matter: {e}")
        return
    plan.front_matter = fm
    if fm.get("sdk") != "gradio":
        plan.problems.append(f"front matter: sdk is {fm.get('sdk')!r}; this app needs 'sdk: gradio'")
    if fm.get("app_file") != "app.py":
        plan.problems.append(f"front matter: app_file is {fm.get('app_file')!r}; it must name app.py")
    pins = requirement_pins(root / "requirements.txt") if (root / "requirements.txt").is_file() else {}
    gradio_pin = pins.get("gradio")
    sdk_version = fm.get("sdk_version")
    if not gradio_pin:
        plan.problems.append(
            "requirements.txt: gradio is not pinned with '=='; the Space's sdk_version must equal "
            "one exact gradio version"
        )
    elif str(sdk_version) != gradio_pin:
        plan.problems.append(
            f"front matter: sdk_version is {sdk_version!r} but requirements.txt pins "
            f"gradio=={gradio_pin}; make them equal (the Space installs gradio from sdk_version)"
        )
    if not isinstance(sdk_version, str) and sdk_version is not None:
        plan.problems.append(f"front matter: sdk_version {sdk_version!r} must be a quoted string")
    _check_python_version(plan, fm.get("python_version"))
    if hardware and hardware.startswith("zero-"):
        if "spaces" not in pins:
            plan.problems.append("requirements.txt: ZeroGPU hardware needs the `spaces` package; add it (pinned)")
        plan.notes.append(
            "ZeroGPU: the per-request work must run inside app.zerogpu.on_gpu (spaces.GPU); "
            "check that python_version and the torch pin are among ZeroGPU's supported versions"
        )
    for item in fm.get("preload_from_hub") or []:
        plan.notes.append(f"preload_from_hub: {item} (downloaded when the Space is built)")


def _check_python_version(plan: Plan, version) -> None:
    if version is None:
        plan.problems.append(
            "front matter: python_version is missing; pin the Python the app was tested with, "
            'e.g. python_version: "3.11"'
        )
        return
    if not isinstance(version, str):
        plan.problems.append(
            f"front matter: python_version is {version!r} (a number: YAML reads 3.10 as 3.1); "
            f'quote it, e.g. python_version: "3.11"'
        )
        return
    if not re.fullmatch(r"3\.\d{1,2}(\.\d{1,2})?", version):
        plan.problems.append(f'front matter: python_version {version!r} is not a Python 3 version like "3.11"')
        return
    spec = requires_python(plan.root / "pyproject.toml")
    if spec:
        try:
            from packaging.specifiers import SpecifierSet

            if not SpecifierSet(spec).contains(version if version.count(".") == 2 else version + ".0"):
                plan.problems.append(
                    f"front matter: python_version {version} is outside pyproject.toml's requires-python {spec!r}"
                )
        except ImportError:  # pragma: no cover
            pass
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if ".".join(version.split(".")[:2]) != here:
        plan.notes.append(
            f"python_version {version} differs from this interpreter ({here}): the pins were checked here with {here}"
        )


def _check_weights(plan: Plan) -> None:
    root = plan.root
    checkpoints = root / "checkpoints"
    try:
        manifest = load_manifest(checkpoints / "manifest.json")
    except (OSError, ValueError, KeyError, TypeError) as e:
        plan.problems.append(f"checkpoints/manifest.json does not load: {type(e).__name__}: {e}")
        return
    for zoo_name, zoo in manifest.zoos.items():
        for entry in zoo.entries.values():
            label = f"{zoo_name}/{entry.name}"
            remote = entry.sources.hub and f"the Hub ({entry.sources.hub.repo_id})" or entry.sources.url
            if entry.unavailable:
                continue  # no weights exist; the app says so in that column
            local = entry.sources.local
            path = (checkpoints / local).resolve() if local else None
            if path is not None and checkpoints.resolve() not in path.parents:
                plan.problems.append(f"weight {label}: sources.local {local!r} points outside checkpoints/")
                continue
            if path is None or not path.is_file():
                if remote:
                    plan.notes.append(f"weight {label}: not shipped; downloads on first use from {remote}")
                else:
                    where = f"checkpoints/{local}" if local else "(no sources.local, hub or url)"
                    plan.problems.append(
                        f"weight {label}: missing weight file {where}; the Space could not serve it "
                        f"and it has no download source"
                    )
                continue
            rel = path.relative_to(root.resolve()).as_posix()
            if not entry.sha256:
                plan.problems.append(f"weight {label}: {rel} has no SHA-256 in the manifest; it cannot be verified")
                continue
            try:
                verify(path, entry.sha256)
            except ChecksumError as e:
                plan.problems.append(f"weight {label}: tampered or corrupt: {e}")
                continue
            plan.files[rel] = path.stat().st_size


def _walk(root: Path):
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not (here / d / "pyvenv.cfg").exists())
        for name in sorted(names):
            yield (here / name).relative_to(root).as_posix()


def _check_files(plan: Plan, max_total_mb: float) -> None:
    root = plan.root
    for name in REQUIRED_FILES:
        if not (root / name).is_file():
            plan.problems.append(f"{name} is missing")
    secrets = []
    for rel in _walk(root):
        if is_secret(Path(rel).name):
            secrets.append(rel)
        elif allowed(rel) and (root / rel).is_file():
            plan.files.setdefault(rel, (root / rel).stat().st_size)
    for rel in secrets:
        plan.problems.append(
            f"secret: {rel} lies in the folder being deployed; remove it or move it elsewhere (the "
            f"deploy reads the token from HF_TOKEN or `hf auth login`; the Space's own secrets "
            f"belong in its settings, never in files)"
        )
    weights = {p for p in plan.files if not allowed(p)}
    for rel in sorted(plan.files):
        if rel in weights or plan.files[rel] > 5 * 2**20:
            continue
        if TOKEN_RE.search((root / rel).read_bytes()):
            plan.problems.append(f"secret: {rel} contains a Hugging Face access token (hf_...); remove it")
    total_mb = plan.total / 2**20
    if total_mb > max_total_mb:
        plan.problems.append(
            f"size: {total_mb:.1f} MB in total is over the {max_total_mb:g} MB limit "
            f"(--max-size-mb); a Space holds the app, not data"
        )
    big = [p for p in plan.files if plan.files[p] > LARGE_FILE_MB * 2**20]
    if big:
        plan.notes.append(f"{len(big)} file(s) over {LARGE_FILE_MB} MB: {', '.join(big)}")


def check(root: str | os.PathLike = ROOT, hardware: str | None = None, max_total_mb: float = MAX_TOTAL_MB) -> Plan:
    """Every check of a deploy, without network: the files it would upload and every problem."""
    plan = Plan(Path(root).resolve())
    if hardware and hardware not in HARDWARE:
        plan.problems.append(f"--hardware {hardware!r} is not a Space hardware; choose one of {', '.join(HARDWARE)}")
    _check_front_matter(plan, hardware)
    _check_weights(plan)
    _check_files(plan, max_total_mb)
    outside = [p for p in plan.files if not allowed(p) and not p.startswith("checkpoints/")]
    assert not outside, f"internal error: files outside the allow-list: {outside}"
    plan.files = dict(sorted(plan.files.items()))
    return plan


def report(plan: Plan, out=None) -> None:
    out = out or sys.stdout
    width = max((len(p) for p in plan.files), default=10)
    print(f"Files to upload from {plan.root}:", file=out)
    for path, size in plan.files.items():
        print(f"  {path:<{width}}  {size:>12,d} B", file=out)
    print(f"  {len(plan.files)} files, {plan.total / 2**20:.1f} MB", file=out)
    for note in plan.notes:
        print(f"note: {note}", file=out)


def refusal(plan: Plan) -> str:
    lines = [f"deploy refused: {len(plan.problems)} problem(s):"] + [f"  - {p}" for p in plan.problems]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- upload


def _revision(root: Path) -> str:
    return revision(root).describe()


def upload(plan: Plan, repo_id: str, private: bool = False, hardware: str | None = None, api=None) -> str:
    """Create (or reuse) the Space and upload the plan's files in one commit; returns the Space URL."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        raise DeployError("HF_HUB_OFFLINE is set: a deploy needs the Hugging Face Hub. Unset it, or use --dry-run.")
    if api is None:
        if not get_token():
            raise DeployError(
                "no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write "
                "access); tokens are never read from files in this repository."
            )
        api = HfApi()
    endpoint = getattr(api, "endpoint", None) or constants.ENDPOINT
    try:
        api.create_repo(
            repo_id, repo_type="space", space_sdk="gradio", private=private, space_hardware=hardware, exist_ok=True
        )
        if hardware:  # create_repo leaves an existing Space's hardware as it is
            api.request_space_hardware(repo_id, hardware)
        present = api.list_repo_files(repo_id, repo_type="space")
        operations = [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(plan.root / path)) for path in plan.files
        ]
        # Files this deploy owns (allow-list, checkpoints/) that are gone here are removed there too.
        operations += [
            CommitOperationDelete(path_in_repo=path)
            for path in present
            if path not in plan.files and (allowed(path) or path.startswith("checkpoints/"))
        ]
        info = api.create_commit(
            repo_id, operations, repo_type="space", commit_message=f"Deploy DSNet Explain from {_revision(plan.root)}"
        )
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = {
            401: "the token is invalid or expired: run `hf auth login` again",
            403: "the token has no write access to this namespace (or the hardware needs a PRO/paid plan)",
            404: "no such namespace: check USER/NAME",
        }.get(status, "see the Hub's message above")
        raise DeployError(f"the Hugging Face Hub refused the deploy to {repo_id}: {e}\n{hint}") from None
    except Exception as e:
        raise DeployError(
            f"cannot reach the Hugging Face Hub at {endpoint} ({type(e).__name__}: {e}); are you "
            f"offline? The Space got no commit (the upload is one commit: all files or none); rerun the "
            f"same command when online (--dry-run checks without the network)."
        ) from None
    url = f"{endpoint.rstrip('/')}/spaces/{repo_id}"
    commit = getattr(info, "oid", None)
    return f"{url}" + (f" (commit {commit})" if commit else "")


def deploy(
    repo_id: str,
    private: bool = False,
    hardware: str | None = None,
    dry_run: bool = False,
    root: str | os.PathLike = ROOT,
    max_total_mb: float = MAX_TOTAL_MB,
    api=None,
    out=None,
) -> Plan:
    """Check, print the plan and, unless ``dry_run``, upload. Raises DeployError listing every problem."""
    out = out or sys.stdout
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", repo_id or "") or len(repo_id) > 96:
        raise DeployError(f"{repo_id!r} is not a Space id; expected USER/NAME (e.g. alice/dsnet-explain)")
    plan = check(root, hardware, max_total_mb)
    report(plan, out)
    if not plan.ok:
        raise DeployError(refusal(plan))
    if dry_run:
        flags = (" --private" if private else "") + (f" --hardware {hardware}" if hardware else "")
        print(
            f"dry run: all checks passed; `python -m app.space deploy {repo_id}{flags}` would upload these "
            f"{len(plan.files)} files ({plan.total / 2**20:.1f} MB) to the Space {repo_id}",
            file=out,
        )
        return plan
    print(f"uploaded: {upload(plan, repo_id, private, hardware, api)}", file=out)
    return plan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.space", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("deploy", help="check, then create the Space and upload the allow-listed files")
    d.add_argument("repo_id", metavar="USER/NAME", help="the Space, e.g. alice/dsnet-explain")
    d.add_argument(
        "--private", action="store_true", help="create the Space private (an existing one keeps its visibility)"
    )
    d.add_argument(
        "--hardware",
        choices=HARDWARE,
        metavar="HARDWARE",
        help=f"Space hardware: {', '.join(HARDWARE)} (default: the Hub's, cpu-basic)",
    )
    d.add_argument("--dry-run", action="store_true", help="check and list the files; no network, no token")
    d.add_argument("--root", type=Path, default=ROOT, help="the folder to deploy (default: this repository)")
    d.add_argument("--max-size-mb", type=float, default=MAX_TOTAL_MB, help="refuse above this total size")
    args = p.parse_args(argv)
    try:
        deploy(args.repo_id, args.private, args.hardware, args.dry_run, args.root, args.max_size_mb)
    except DeployError as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

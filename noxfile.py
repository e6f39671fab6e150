"""The one session file: every check CI runs, and the main job (CONTRIBUTING.md).

Default run (what `.ci/run` and README's test command run):
    lint, typecheck, layers, tests(pkg=...) for every package, integration, wheels
Not in the default run: quickstart (README's main job), bench, gpu.

Disk: each session with torch builds a ~1 GB environment, ~9 GB for the default run. With
GPTMED_NOX_PRUNE=1 (`.ci/run` sets it) each session deletes its environment when it ends, so the
run needs ~2 GB at its peak.

Every session installs with pip and the constraints file, which pins torch to the CPU build
that lies on the project's machines (an unpinned torch downloads a multi-GB CUDA build).
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
# --no-compile: byte-compiling all of torch at install time costs ~50 s per session on 2 cores;
# Python compiles the modules it actually imports on first use.
PIP_ARGS = ("--no-compile", "-c", str(ROOT / "constraints.txt"))
ARTIFACTS = ROOT / ".nox" / "_artifacts"

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "typecheck", "layers", "tests", "integration", "wheels"]


def _pruned(func: Callable[..., None]) -> Callable[..., None]:
    """With GPTMED_NOX_PRUNE=1, delete the session's virtualenv when the session ends (pass or fail)."""

    @functools.wraps(func)
    def run(session: nox.Session, **params: str) -> None:
        try:
            func(session, **params)
        finally:
            location = getattr(session.virtualenv, "location", None)
            if os.environ.get("GPTMED_NOX_PRUNE") == "1" and location:
                shutil.rmtree(location, ignore_errors=True)
                session.log(f"GPTMED_NOX_PRUNE=1: removed {location}")

    return run


@dataclass(frozen=True)
class Package:
    folder: str  # packages/<folder>
    local: tuple[str, ...] = ()  # gptmed packages it depends on at run time
    test_local: tuple[str, ...] = ()  # gptmed packages its tests also need
    extras: tuple[str, ...] = ("test",)  # its own extras installed for its tests
    env: dict[str, str] = field(default_factory=dict)  # environment for its tests

    @property
    def path(self) -> Path:
        return ROOT / "packages" / self.folder

    @property
    def present(self) -> bool:
        return (self.path / "pyproject.toml").exists()


PACKAGES: dict[str, Package] = {
    "core": Package("gptmed-core"),
    "data": Package("gptmed-data", local=("core",), extras=("test", "parquet")),
    "tokenizer": Package("gptmed-tokenizer", local=("core",)),
    "model": Package("gptmed-model", local=("core",), extras=("test", "triton")),
    # [tensorboard]: the events test reads what --tensorboard writes (~30 s more to install).
    "train": Package("gptmed-train", local=("core", "model"), extras=("test", "tensorboard")),
    "infer": Package(
        "gptmed-infer", local=("core", "tokenizer"), test_local=("model",), extras=("test", "export")
    ),
    "gptmed": Package("gptmed", local=("core", "data", "tokenizer", "model", "train", "infer")),
}
PRESENT = [name for name, pkg in PACKAGES.items() if pkg.present]


def _closure(names: tuple[str, ...] | list[str]) -> list[str]:
    """The named packages and every gptmed package they need at run time, in PACKAGES order."""
    wanted: set[str] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name in wanted or not PACKAGES[name].present:
            continue
        wanted.add(name)
        stack.extend(PACKAGES[name].local)
    return [n for n in PACKAGES if n in wanted]


def _install_local(
    session: nox.Session, names: list[str], extras: dict[str, tuple[str, ...]] | None = None
) -> None:
    """pip-install local packages (with their extras) in one resolver run, torch pinned."""
    extras = extras or {}
    specs = []
    for name in names:
        pkg = PACKAGES[name]
        ex = [e for e in extras.get(name, ()) if _has_extra(pkg, e)]
        specs.append(f"{pkg.path}[{','.join(ex)}]" if ex else str(pkg.path))
    session.install(*PIP_ARGS, *specs)


def _has_extra(pkg: Package, extra: str) -> bool:
    """Whether the package's pyproject.toml declares ``[project.optional-dependencies] extra``."""
    path = pkg.path / "pyproject.toml"
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10 has no TOML parser: a line-start text match
        text = path.read_text(encoding="utf-8")
        return f"\n{extra} = [" in text or f"\n{extra}=[" in text
    with path.open("rb") as fh:
        extras = tomllib.load(fh).get("project", {}).get("optional-dependencies", {})
    return extra in extras


@nox.session
@_pruned
def lint(session: nox.Session) -> None:
    """ruff check + format check, and the PEP 420 guard: no src/gptmed/__init__.py anywhere."""
    bad = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("packages/*/src/gptmed/__init__.py"))
    if bad:
        session.error(f"namespace folder must stay empty (PEP 420), remove: {bad}")
    session.install("--no-compile", "ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
@_pruned
def typecheck(session: nox.Session) -> None:
    """mypy: strict for gptmed-core, checked for the rest."""
    _install_local(session, _closure(PRESENT))
    # the server's own dependencies (gptmed-infer[serve]) so its code is checked against their types
    session.install(*PIP_ARGS, "mypy==2.4.1", "numpy", "starlette", "uvicorn", "prometheus-client")
    targets = [str(PACKAGES[n].path / "src") for n in PRESENT]
    session.run("mypy", "--config-file", str(ROOT / "pyproject.toml"), *targets)


@nox.session
@_pruned
def layers(session: nox.Session) -> None:
    """The import-linter layering contracts of the root pyproject.toml (docs/architecture.md)."""
    _install_local(session, _closure(PRESENT))
    session.install(*PIP_ARGS, "import-linter==2.17")
    config = str(ROOT / "pyproject.toml")
    session.run("lint-imports", "--config", config, "--no-cache")
    # The contracts must be able to fail: inject a forbidden import into the installed gptmed.core
    # and expect lint-imports to reject it.
    core_dir = session.run(
        "python", "-c", "import gptmed.core, os; print(os.path.dirname(gptmed.core.__file__))", silent=True
    )
    _expect_broken(session, config, str(core_dir).strip(), "import click", "gptmed.core")
    # ... and the torch-free runtime: an 'import torch' in gptmed.inference (outside its export
    # subpackage) must break them too.
    if "infer" in PRESENT:
        runtime_dir = session.run(
            "python",
            "-c",
            "import gptmed.inference, os; print(os.path.dirname(gptmed.inference.__file__))",
            silent=True,
        )
        _expect_broken(
            session, config, str(runtime_dir).strip(), "import torch", "the gptmed.inference runtime"
        )


def _expect_broken(session: nox.Session, config: str, folder: str, statement: str, where: str) -> None:
    """Inject ``statement`` as a module in ``folder`` and expect lint-imports to reject it."""
    injected = Path(folder) / "_injected_forbidden_import.py"
    injected.write_text(f"{statement}  # noqa: F401  (forbidden in {where})\n", encoding="utf-8")
    try:
        session.run("lint-imports", "--config", config, "--no-cache", success_codes=[1], silent=True)
        session.log(f"an injected '{statement}' in {where} breaks the contracts: ok")
    finally:
        injected.unlink()


@nox.session
@nox.parametrize("pkg", PRESENT)
@_pruned
def tests(session: nox.Session, pkg: str) -> None:
    """One package's tests, in an env with only its declared dependencies (+ test-only siblings)."""
    spec = PACKAGES[pkg]
    names = _closure([*spec.local, pkg, *spec.test_local])
    _install_local(session, names, {pkg: spec.extras})
    env = {"PYTHONHASHSEED": "0", **spec.env}
    session.run("pytest", str(spec.path / "tests"), "-q", "-p", "no:cacheprovider", *session.posargs, env=env)


@nox.session
@_pruned
def integration(session: nox.Session) -> None:
    """End to end across packages (integration_tests/), CPU, small data the tests make."""
    # [triton]: bench/attention.py's CPU smoke run (the kernels under the Triton interpreter);
    # [serve] and openai: bench/serve.py's smoke run (a real server driven by the openai client).
    _install_local(session, _closure(PRESENT), {"infer": ("export", "serve"), "model": ("triton",)})
    session.install(*PIP_ARGS, "pytest", "hypothesis", "openai>=1.30")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    env = {"PYTHONHASHSEED": "0", "GPTMED_ARTIFACTS": str(ARTIFACTS)}
    session.run(
        "pytest", str(ROOT / "integration_tests"), "-q", "-p", "no:cacheprovider", *session.posargs, env=env
    )


@nox.session
@_pruned
def wheels(session: nox.Session) -> None:
    """Build every package; install gptmed-infer from its wheel without torch; answer from a bundle."""
    dist = ROOT / ".nox" / "_dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.install("--no-compile", "build==1.6.1")
    for name in PRESENT:
        session.run(
            "python", "-m", "build", "--wheel", "--outdir", str(dist), str(PACKAGES[name].path), silent=True
        )
    built = sorted(p.name for p in dist.glob("*.whl"))
    session.log(f"built {len(built)} wheels: {built}")
    for name in PRESENT:
        _check_wheel_contents(session, PACKAGES[name], dist)
    if "infer" not in PRESENT:
        session.log("gptmed-infer is not in the tree yet: nothing more to check")
        return
    # A fresh environment: gptmed-infer and its gptmed dependencies from the wheels just built
    # (by file, so no package index can substitute another build), third-party deps from PyPI.
    wheels_of = {w.name.split("-")[0]: w for w in dist.glob("*.whl")}
    session.install(
        "--no-compile", *(str(wheels_of[n]) for n in ("gptmed_core", "gptmed_tokenizer", "gptmed_infer"))
    )
    session.run("python", "-c", _NO_TORCH)
    bundle = ARTIFACTS / "bundle"
    if not (bundle / "gptmed.json").exists():
        session.error(f"no bundle at {bundle}: run `nox -s integration` first (it exports one)")
    check = ROOT / "packages" / "gptmed-infer" / "tests_wheel" / "check_wheel_install.py"
    session.run("python", str(check), str(bundle))
    if "gptmed" in PRESENT:
        # The umbrella command on an infer-only install lists only what is installed.
        session.install("--no-compile", "--no-deps", str(wheels_of["gptmed"]))
        session.run("python", "-c", _INFER_ONLY_HELP)


def _check_wheel_contents(session: nox.Session, pkg: Package, dist: Path) -> None:
    """The package's wheel holds exactly its source tree under src/gptmed (every module, py.typed,
    gptmed-data's sample and its license), no gptmed/__init__.py (PEP 420), and its LICENSE."""
    import zipfile

    prefix = pkg.folder.replace("-", "_") + "-"  # gptmed-data -> gptmed_data-0.1.0-...whl
    found = [w for w in dist.glob("*.whl") if w.name.startswith(prefix)]
    if len(found) != 1:
        session.error(f"expected one wheel of {pkg.folder} in {dist}, found {[w.name for w in found]}")
    names = zipfile.ZipFile(found[0]).namelist()
    shipped = {n for n in names if not n.split("/")[0].endswith(".dist-info")}
    src = pkg.path / "src"
    expected = {
        p.relative_to(src).as_posix()
        for p in src.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    problems = []
    if shipped != expected:
        problems.append(
            f"not shipped: {sorted(expected - shipped)}; not in src: {sorted(shipped - expected)}"
        )
    if "gptmed/__init__.py" in shipped:
        problems.append("ships gptmed/__init__.py (the namespace must stay PEP 420)")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        problems.append("no LICENSE in its .dist-info")
    if problems:
        session.error(f"{found[0].name}: " + "; ".join(problems))
    session.log(f"{found[0].name}: {len(shipped)} files, the whole src tree, LICENSE: ok")


_NO_TORCH = """
import importlib.util, sys
if importlib.util.find_spec("torch") is not None:
    sys.exit("torch is importable in the gptmed-infer wheel environment")
print("torch is not installed: ok")
"""

_INFER_ONLY_HELP = """
import subprocess, sys
out = subprocess.run(["gptmed", "--help"], capture_output=True, text=True, check=True).stdout
rows = out.split("Commands:")[1].splitlines()
names = {line.split()[0] for line in rows if line.startswith("  ") and not line.startswith("   ")}
assert {"generate", "infer", "tokenizer"} <= names, names
assert not names & {"train", "model", "data"}, names  # not installed here
assert "cli-reference" not in names, names  # hidden
print("gptmed --help on an infer-only install lists:", sorted(names))
# a component that is not installed, and the pipeline without its components: one line each, exit 1
for argv, expected in (
    (["gptmed", "train", "-h"], "Error: `gptmed train` comes with gptmed-train, which is not installed: pip install gptmed-train"),
    (["gptmed", "pipeline", "-h"], None),
    (["gptmed", "quickstart", "--out", "qs"], "Error: gptmed quickstart needs gptmed-data, gptmed-model, gptmed-train, gptmed-infer[export], not installed here; install every component with: pip install gptmed"),
):
    r = subprocess.run(argv, capture_output=True, text=True)
    if expected is None:
        assert r.returncode == 0, r.stderr
        continue
    assert (r.returncode, r.stderr.strip()) == (1, expected), (argv, r.returncode, r.stderr)
    print(" ".join(argv[1:]), "->", r.stderr.strip())
"""


@nox.session
@_pruned
def quickstart(session: nox.Session) -> None:
    """README's main job: the whole pipeline on the embedded sample, then answers from the bundle."""
    _install_local(session, _closure(["gptmed"]), {"infer": ("export",)})
    out = session.posargs[0] if session.posargs else "gptmed-quickstart"
    session.run("gptmed", "quickstart", "--out", out)


@nox.session
@_pruned
def bench(session: nox.Session) -> None:
    """Every benchmark in bench/ (side by side with its anchor); not in the default run."""
    _install_local(session, _closure(PRESENT), {"infer": ("export",)})
    session.install(*PIP_ARGS, "transformers", "tokenizers", "pandas", "psutil")
    for script in sorted((ROOT / "bench").glob("*.py")):
        session.run("python", str(script), *session.posargs)


@nox.session
@_pruned
def gpu(session: nox.Session) -> None:
    """CUDA checks (parity tests marked gpu + GPU benchmarks); needs an NVIDIA GPU."""
    _install_local(session, _closure(PRESENT), {"model": ("test", "triton")})
    session.run("python", "-c", "import torch, sys; sys.exit(not torch.cuda.is_available())")
    # gpu-marked parity tests, then both GPU benchmarks, in under 5 minutes (fits a short GPU loan).
    session.run("bash", str(ROOT / "bench" / "gpu_check.sh"), external=True)

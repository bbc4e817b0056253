"""Layers import downward only: no module imports one on a higher floor; runtime/ never imports prefetch/.

The floors (docs/architecture.md, "Floors") are declared once, here. Every .py under
runtime/, predictor/ and prefetch/ is parsed with `ast` (nothing is imported), and every
import in it counts: module level and inside functions, `import a.b`, `from a import b`
(b a module or a name in a), relative imports. Importing a module on the same floor or a
lower one is allowed; a higher one fails, naming both modules and both floors.

`import runtime.x` also runs runtime/__init__.py; that package module is on the runtime's
top floor, and keeps `runtime.prefetcher` (which pulls in the predictor) behind a lazy
`__getattr__`, so recording and the contracts load without the predictor.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("runtime", "predictor", "prefetch")

# Lowest first. A module is on the floor of its exact name, else of the first pattern that
# matches it. runtime/ modules are listed one by one: a new one must be placed on purpose.
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("contracts", (
        "runtime.trace_format", "runtime.trace_validate", "runtime.trace_identity", "runtime.architecture",
        "runtime.link", "runtime.stats", "runtime.budget", "runtime.wire", "runtime.wire_decode", "runtime.defaults",
        "runtime.run_report", "runtime.hint_schedule",
        "predictor.interface",
    )),
    ("runtime core", (
        "runtime.overhead", "runtime.device", "runtime.trace_writer", "runtime.tracker", "runtime.recorder", "runtime.live_trace",
        "runtime.launch", "runtime.cuda_monitor", "runtime.host_stepping", "runtime.state_compare",
        "runtime.tier", "runtime.store", "runtime.grad_offload", "runtime.daemon_client", "runtime.daemon_launch",
        "runtime.optimizer_cost", "runtime.device_stepping", "runtime.placement", "runtime.routers",
        "runtime.closure_step",
    )),
    ("predictor", ("predictor", "predictor.*")),
    ("runtime top", (
        "runtime", "runtime.policy_spec", "runtime.daemon_policy", "runtime.prefetcher", "runtime.run_launch",
        "runtime.trainer_session", "runtime.hf", "runtime.lightning",
    )),
    ("prefetch", ("prefetch", "prefetch.*")),
)


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every .py under the three packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def floor_of(module: str) -> int | None:
    """The index of `module`'s floor, or None when no floor declares it."""
    for i, (_, names) in enumerate(FLOORS):
        if module in names:
            return i
    for i, (_, names) in enumerate(FLOORS):
        if any("*" in pattern and fnmatch.fnmatchcase(module, pattern) for pattern in names):
            return i
    return None


def imported_modules(path: Path, module: str, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, at any depth, resolved to a known module
    (the longest known prefix of `a.b.c`); imports of anything else are left out."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
        for name in names:
            target = resolve(name)
            if target is not None and target != module:
                found.append((node.lineno, target))
    return found


def _edges() -> list[tuple[str, int, str]]:
    modules = _modules()
    known = set(modules)
    return [(m, line, target) for m, path in modules.items() for line, target in imported_modules(path, m, known)]


def test_every_module_is_on_a_floor():
    """Every module of runtime/, predictor/ and prefetch/ is on exactly one declared floor, and every
    module declared by name exists."""
    modules = _modules()
    assert not [m for m in modules if floor_of(m) is None], "modules on no floor: declare them in FLOORS"
    declared = {n for _, names in FLOORS for n in names if "*" not in n}
    assert not declared - set(modules), "FLOORS names modules that do not exist"
    assert len(declared) == sum(len([n for n in names if "*" not in n]) for _, names in FLOORS), \
        "a module is declared on two floors"


def test_imports_go_downward_only():
    """No module imports a module on a higher floor (module-level and nested imports alike)."""
    up = []
    for module, line, target in _edges():
        low, high = floor_of(module), floor_of(target)
        if low is not None and high is not None and high > low:
            up.append(f"{module}:{line} (floor {low} {FLOORS[low][0]}) imports {target} "
                      f"(floor {high} {FLOORS[high][0]})")
    assert not up, "imports up a floor:\n" + "\n".join(up)


def test_runtime_never_imports_prefetch():
    """Nothing under runtime/ imports prefetch/ (the daemon is started as a subprocess, never imported)."""
    bad = [f"{m}:{line} imports {t}" for m, line, t in _edges()
           if m.split(".")[0] == "runtime" and t.split(".")[0] == "prefetch"]
    assert not bad, "\n".join(bad)


def test_import_walk_sees_nested_and_relative_imports(tmp_path):
    """The walk finds imports inside functions, `import a.b`, `from a import b` and relative ones."""
    pkg = tmp_path / "runtime"
    pkg.mkdir()
    src = pkg / "x.py"
    src.write_text("import runtime.y\nfrom . import z\n\ndef f():\n    from prefetch.daemon import Daemon\n"
                   "    import prefetch.wire\n")
    known = {"runtime", "runtime.x", "runtime.y", "runtime.z", "prefetch", "prefetch.daemon"}
    assert imported_modules(src, "runtime.x", known) == [
        (1, "runtime.y"), (2, "runtime.z"), (5, "prefetch.daemon"), (6, "prefetch")]

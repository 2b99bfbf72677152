"""The layers of the package (docs/architecture.md), checked on the source's import statements.

- ``scircuits.store`` imports nothing from ``scircuits.platform``;
- ``scircuits.platform.contract`` imports nothing from the other parts of ``scircuits.platform``,
  and names none of their types even for type checkers (but the report writer's);
- no import cycle between the parts (platform subpackages and modules, store, cli, plugins, testing);
- in the core's subpackages, the store and the built-in plugins, no function-local import of the
  package's own modules (they are for heavy third-party libraries only);
- built-in plugins and the example plugin import only the top-level ``scircuits`` package;
- no built-in plugin's name appears as a string literal in ``scircuits/platform``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scircuits"
PLATFORM = PACKAGE / "platform"
# every subpackage of the core (the local-import rule covers them all)
CORE_SUBPACKAGES = tuple(
    sorted(p.name for p in PLATFORM.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
)


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    target: str  # absolute dotted module name
    local: bool  # inside a function body
    typing_only: bool = False  # under ``if TYPE_CHECKING:``: no runtime dependency


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))

    def visit(node: ast.AST, in_function: bool, typing_only: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            typing = typing_only or (
                isinstance(child, ast.If)
                and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
            )
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(path, child.lineno, alias.name, in_function, typing_only)
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(path, child)
                for alias in child.names:
                    # "from scircuits.platform.train import checkpoint" imports a module
                    yield Import(path, child.lineno, f"{base}.{alias.name}", in_function, typing_only)
            yield from visit(child, inside, typing)

    yield from visit(tree, False, False)


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def part_of(module: str) -> str | None:
    """The unit of the layer graph a module belongs to."""
    parts = module.split(".")
    if parts[0] != "scircuits" or len(parts) < 2:
        return None
    if parts[1] == "platform" and len(parts) >= 3:
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def internal_imports(root: Path) -> list[Import]:
    return [i for p in python_files(root) for i in imports_of(p) if i.target.startswith("scircuits.")]


def test_the_store_imports_nothing_from_the_platform():
    bad = [i for i in internal_imports(PACKAGE / "store") if i.target.startswith("scircuits.platform")]
    assert not bad, "\n".join(f"{i.path.relative_to(ROOT)}:{i.line} imports {i.target}" for i in bad)


def test_the_contract_imports_nothing_from_the_other_platform_parts():
    contract = "scircuits.platform.contract"
    bad = [
        i
        for i in internal_imports(PLATFORM / "contract")
        if i.target.startswith("scircuits.platform")
        and not i.target.startswith(contract)
        and not i.typing_only
    ]
    assert not bad, "\n".join(f"{i.path.relative_to(ROOT)}:{i.line} imports {i.target}" for i in bad)


# ReportDocument, the report writer analyses draw their sections with, is the one type the contract
# names (for type checkers only) from above it.
CONTRACT_TYPING_ALLOWED = {"scircuits.platform.report.document.ReportDocument"}


def test_the_contract_defines_the_types_its_families_name():
    """Even for type checkers, the contract names only its own types (StudyContext and StudyResults
    of the analysis family are defined in it), and the public names resolve to them."""
    contract = "scircuits.platform.contract"
    bad = [
        i
        for i in internal_imports(PLATFORM / "contract")
        if i.target.startswith("scircuits.platform")
        and not i.target.startswith(contract)
        and i.target not in CONTRACT_TYPING_ALLOWED
    ]
    assert not bad, "\n".join(f"{i.path.relative_to(ROOT)}:{i.line} imports {i.target}" for i in bad)
    import scircuits

    for name in ("StudyContext", "StudyResults", "Analysis", "AnalysisResult"):
        assert getattr(scircuits, name).__module__.startswith(contract + "."), name


def test_no_import_cycle_between_the_parts():
    graph: dict[str, set[str]] = {}
    for path in python_files(PACKAGE):
        source = part_of(module_name(path))
        if source is None:
            continue
        for imp in imports_of(path):
            if imp.typing_only:
                continue
            target = part_of(imp.target)
            if target is not None and target != source and target != "scircuits.__init__":
                graph.setdefault(source, set()).add(target)
    cycles = []
    state: dict[str, int] = {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


# Built-in plugins are left out: a plugin module must not import torch when it is loaded, so its
# torch-backed module (e.g. plugins/saes/modules.py) is imported inside the function that builds one.
LOCAL_IMPORT_RULE_ROOTS = [*(PLATFORM / name for name in CORE_SUBPACKAGES), PACKAGE / "store"]


def test_the_local_import_rule_covers_every_core_subpackage():
    expected = {"causal", "collect", "common", "compare", "config", "contract", "manager", "model"}
    expected |= {"pipeline", "report", "train"}
    assert expected <= set(CORE_SUBPACKAGES)
    assert not [p for p in PLATFORM.glob("*.py") if p.name != "__init__.py"], (
        "platform/ holds only subpackages"
    )


@pytest.mark.parametrize("root", LOCAL_IMPORT_RULE_ROOTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_function_local_imports_are_for_heavy_libraries_only(root):
    bad = [i for i in internal_imports(root) if i.local]
    assert not bad, "\n".join(
        f"{i.path.relative_to(ROOT)}:{i.line} imports {i.target} inside a function" for i in bad
    )


PLUGIN_ROOTS = [PACKAGE / "plugins", ROOT / "examples"]


@pytest.mark.parametrize("root", PLUGIN_ROOTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_package(root):
    files = python_files(root)
    assert files, f"no Python files under {root}"
    bad = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            bad += [
                f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"
                for name in names
                if name.startswith("scircuits.")
            ]
    assert not bad, "plugins may import only `scircuits` itself:\n" + "\n".join(bad)


def builtin_plugin_names() -> set[str]:
    from scircuits.platform.manager.plugin_set import load_plugins

    plugins = load_plugins(entry_points_too=False)
    assert not plugins.failed(), [p.error for p in plugins.failed()]
    return {name for registry in plugins.registries.values() for name in registry.names()}


def test_the_platform_names_no_builtin_plugin():
    names = builtin_plugin_names()
    assert {"relu", "smollm2-135m", "arithmetic", "zero"} <= names  # the check has something to find
    found = []
    for path in python_files(PLATFORM):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, "the core names built-in plugins:\n" + "\n".join(found)


def test_every_hook_is_documented():
    """datasette's rule: a hook without a section in docs/plugins.md is not finished."""
    from scircuits.platform.contract import hookspecs

    hooks = sorted(
        name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), f"{hookspecs.PROJECT}_spec")
    )
    assert hooks, "no hook specifications found"
    doc = (ROOT / "docs" / "plugins.md").read_text()
    missing = [name for name in hooks if f"### {name}" not in doc]
    assert not missing, f"hooks without a section in docs/plugins.md: {missing}"


def test_every_packaged_data_file_is_declared_package_data():
    """A file the package reads at run time (static/..., templates/...) ships in the wheel only when
    pyproject's package-data names it; an installed scircuits without it could not build a site."""
    import fnmatch

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    folders = {"static", "templates"}
    data = [p for p in PACKAGE.rglob("*") if p.is_file() and folders & set(p.relative_to(PACKAGE).parts)]
    assert data, "no packaged data files found"
    missing = []
    for path in data:
        package_dir = next(d for d in path.parents if (d / "__init__.py").is_file())
        relative = path.relative_to(package_dir).as_posix()
        patterns = declared.get(module_name(package_dir / "__init__.py"), [])
        if not any(fnmatch.fnmatch(relative, pattern) for pattern in patterns):
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"

"""The layout rules of docs/architecture.md, checked on the source: imports run one way, no
private name crosses a module boundary, and functions fit on a screen.

Every ``import`` statement counts, at module level or inside a function (a lazy import is still
a dependency); those under ``if TYPE_CHECKING:`` do not (they never run). The rules read the
files with :mod:`ast`: nothing is imported.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The project's own top-level packages and folders of scripts.
PACKAGES = ("anomalygen", "anomalygen_cli", "resynth_models")
SCRIPTS = ("benchmarks", "examples", "tests")
#: Packages installed from a folder of another name (pyproject.toml's package-dir): the CLI's
#: modules live in cli/ and are imported as anomalygen_cli.
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
FOLDERS: dict[str, str] = SETUPTOOLS["package-dir"]
CLI = "anomalygen_cli"

#: Inside these packages, a module imports only the modules listed before it (and modules
#: outside the package); the package's ``__init__`` is its public face and comes last.
LAYERS = {
    "anomalygen.store": [
        "options",
        "format",
        "text",
        "patches",
        "schema",
        "digests",
        "location",
        "access",
        "checked",
        "compact",
        "reader",
        "writer",
        "info",
    ],
    "anomalygen.render": ["threads", "cache", "tasks", "runners", "dask", "lock", "coordinator"],
    "resynth_models": [
        # the parts: networks, data, metrics, files
        "devices",
        "photometric",
        "losses",
        "metrics",
        "curves",
        "overlay",
        "baseline",
        "networks",
        "data",
        "datasets",
        "checkpoint",
        # training, bottom up: the knobs, the config, the run folder, the machine, the loop
        "train_options",
        "schedule",
        "train_config",
        "train_results",
        "run_folder",
        "run_log",
        "runtime",
        "stage_data",
        "step",
        "validation",
        "train",
        # using a trained detector
        "evaluate",
        "predict",
    ],
}
#: Who may import the render coordinator: the CLI, and the render package's public face.
COORDINATOR = "anomalygen.render.coordinator"
#: What anomalygen never imports: it works without torch, and the CLI is a shell over it.
NOT_IN_ANOMALYGEN = ("torch", "resynth_models", CLI)

MAX_LINES = 80
MAX_PARAMETERS = 8
#: Library functions whose parameters are a command's option list, one keyword per option (as a
#: CLI command's are); their bodies are held to MAX_LINES like any other.
OPTION_LISTS = {
    "anomalygen.render.coordinator.render": "the options of `anomalygen render`",
    "anomalygen.preview.live_preview": "the options of `anomalygen preview --src`",
    "resynth_models.train.train": "the options of `resynth train` (its knobs are a TrainConfig)",
    "resynth_models.evaluate.evaluate": "the options of `resynth evaluate`",
    "resynth_models.predict.predict": "the options of `resynth predict`",
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (for `from M import name`: M.name if that is a module)
    names: tuple[str, ...]  # names taken by `from M import ...` (empty for `import M`)
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    names = {folder: package for package, folder in FOLDERS.items()}
    parts[0] = names.get(parts[0], parts[0])
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    files = {}
    for top in PACKAGES + SCRIPTS:
        for path in sorted((ROOT / FOLDERS.get(top, top)).rglob("*.py")):
            files[module_name(path)] = path
    return files


FILES = source_files()


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        todo.extend(ast.iter_child_nodes(node))


def imports_of(module: str, path: Path) -> list[Import]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in _statements(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [Import(module, alias.name, (), node.lineno) for alias in node.names]
            continue
        base = node.module or ""
        if node.level:
            anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = f"{anchor}.{base}" if base else anchor
        names = tuple(alias.name for alias in node.names)
        submodules = [f"{base}.{name}" for name in names if f"{base}.{name}" in FILES]
        for target in submodules or [base]:
            out.append(Import(module, target, names, node.lineno))
    return out


IMPORTS = [imp for module, path in FILES.items() for imp in imports_of(module, path)]


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _where(imp: Import) -> str:
    return f"{FILES[imp.module].relative_to(ROOT)}:{imp.line}"


# ------------------------------------------------------------------------------------------
# Imports
# ------------------------------------------------------------------------------------------


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles_inside_a_package(package: str) -> None:
    edges: dict[str, set[str]] = {}
    for imp in IMPORTS:
        if _in(imp.module, package) and _in(imp.target, package) and imp.target != imp.module:
            edges.setdefault(imp.module, set()).add(imp.target)
    assert _cycles(edges) == []


def _private(dotted: str) -> bool:
    return any(p.startswith("_") and not p.startswith("__") for p in dotted.split("."))


def test_no_private_name_is_imported_from_another_module() -> None:
    bad = [
        f"{_where(imp)}: from {imp.target} import {name}"
        for imp in IMPORTS
        for name in imp.names
        if _private(name)
    ]
    bad += [f"{_where(imp)}: import {imp.target}" for imp in IMPORTS if _private(imp.target)]
    assert bad == []


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_imports_run_one_way_inside_a_package(package: str) -> None:
    order = LAYERS[package]
    assert sorted(m for m in FILES if m.startswith(package + ".")) == sorted(
        f"{package}.{name}" for name in order
    ), f"LAYERS[{package!r}] must list every module of the package"
    bad = []
    for imp in IMPORTS:
        if not (imp.module.startswith(package + ".") and _in(imp.target, package)):
            continue
        here = order.index(imp.module.rpartition(".")[2])
        if imp.target == package and imp.names == ("__version__",):
            continue  # the package's version, not its API
        if imp.target == package:
            bad.append(f"{_where(imp)}: imports its package's public face {package}")
        elif order.index(imp.target.rpartition(".")[2]) >= here:
            bad.append(f"{_where(imp)}: {imp.module} imports {imp.target}, a layer above it")
    assert bad == []


def test_the_store_never_imports_the_renderer_or_the_tools_on_top() -> None:
    above = ("anomalygen.render", "anomalygen.verify", "anomalygen.preview", "anomalygen.export")
    bad = [
        f"{_where(imp)}: {imp.target}"
        for imp in IMPORTS
        if _in(imp.module, "anomalygen.store") and any(_in(imp.target, a) for a in above)
    ]
    assert bad == []


def test_only_the_cli_and_the_public_face_import_the_coordinator() -> None:
    bad = [
        f"{_where(imp)}: {imp.module}"
        for imp in IMPORTS
        if imp.target == COORDINATOR
        and not (_in(imp.module, CLI) or imp.module == "anomalygen.render")
    ]
    assert bad == []


def test_anomalygen_imports_neither_torch_nor_resynth_models_nor_the_cli() -> None:
    bad = [
        f"{_where(imp)}: {imp.target}"
        for imp in IMPORTS
        if _in(imp.module, "anomalygen") and any(_in(imp.target, n) for n in NOT_IN_ANOMALYGEN)
    ]
    assert bad == []


def test_nothing_but_the_cli_and_its_tests_imports_the_cli() -> None:
    bad = [
        f"{_where(imp)}: {imp.target}"
        for imp in IMPORTS
        if _in(imp.target, CLI) and not (_in(imp.module, CLI) or _in(imp.module, "tests"))
    ]
    assert bad == []


def test_nothing_imports_the_cli_by_its_folder_name() -> None:
    """cli/ installs as anomalygen_cli; ``import cli...`` works only inside a checkout (and
    there it may be another project's cli)."""
    bad = [f"{_where(imp)}: {imp.target}" for imp in IMPORTS if _in(imp.target, "cli")]
    assert bad == []


def test_the_rules_see_imports() -> None:
    """The walker finds lazy imports and skips TYPE_CHECKING blocks (else the rules above
    would pass on nothing)."""
    found = {(i.module, i.target) for i in IMPORTS}
    assert ("anomalygen.render.coordinator", "anomalygen.render.dask") in found  # in a function
    assert (f"{CLI}.render_cmd", "anomalygen.render") in found
    assert ("anomalygen.store.format", "anomalygen.generator") in found  # lazy, in from_attrs
    assert not any(i.module == "anomalygen.render" and i.target == COORDINATOR for i in IMPORTS)
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


# ------------------------------------------------------------------------------------------
# Function size
# ------------------------------------------------------------------------------------------


def _functions(path: Path) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """``(qualified name, node)`` of every function and method in a file."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}.{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield name, child
                yield from walk(child, name)

    yield from walk(ast.parse(path.read_text()), module_name(path))  # type: ignore[misc]


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.arg]:
    args = node.args
    params = args.posonlyargs + args.args + args.kwonlyargs
    params += [a for a in (args.vararg, args.kwarg) if a is not None]
    return [p for p in params if p.arg not in ("self", "cls")]


def _is_cli_command(name: str, node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A typer command: in cli/, with options declared through typer (or cli/options.py)."""
    if not name.startswith(f"{CLI}."):
        return False
    notes = [ast.unparse(p.annotation) for p in _parameters(node) if p.annotation is not None]
    return any("typer." in n or n.startswith("opt.") for n in notes)


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and len(body) > 1:
        first = body[1]  # the docstring is not code
    return node.end_lineno - first.lineno + 1  # type: ignore[operator]


def test_functions_fit_on_a_screen() -> None:
    """At most MAX_LINES lines and MAX_PARAMETERS parameters, in every package; an option list
    (a CLI command's, or an OPTION_LISTS function's) may be longer, its body not."""
    too_long, too_many = [], []
    for module, path in FILES.items():
        if not any(_in(module, package) for package in PACKAGES):
            continue
        for name, node in _functions(path):
            options = _is_cli_command(name, node) or name in OPTION_LISTS
            lines = _body_lines(node) if options else node.end_lineno - node.lineno + 1
            if lines > MAX_LINES:
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}: {lines} lines")
            if not options and len(_parameters(node)) > MAX_PARAMETERS:
                count = len(_parameters(node))
                too_many.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}: {count}")
    assert not too_long, f"over {MAX_LINES} lines: " + "; ".join(too_long)
    assert not too_many, f"over {MAX_PARAMETERS} parameters: " + "; ".join(too_many)


def test_option_lists_name_existing_functions() -> None:
    names = {name for module, path in FILES.items() for name, _ in _functions(path)}
    assert set(OPTION_LISTS) <= names

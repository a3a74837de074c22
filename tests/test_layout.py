"""The design's layout: four rooms at the root, imports flowing policies <- tasks <- meta."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"policies": ("maskpolicy.tasks", "maskpolicy.meta"), "tasks": ("maskpolicy.meta",), "meta": ()}
RELATIVE_ESCAPES = {"policies": ("tasks", "meta"), "tasks": ("meta",), "meta": ()}


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """(module, relative level) for every import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_imports_flow_one_way(room):
    offenders = []
    for path in sorted((ROOT / room).rglob("*.py")):
        for module, level in imported_modules(path):
            absolute = level == 0 and module.startswith(FORBIDDEN[room])
            escapes = level >= 2 and module.split(".")[0] in RELATIVE_ESCAPES[room]
            if absolute or escapes or (level == 0 and module.split(".")[0] in ("tasks", "meta")):
                offenders.append(f"{path.relative_to(ROOT)} imports {'.' * level}{module}")
    assert not offenders, "\n".join(offenders)


def test_the_top_level_package_only_names_things_and_no_room_imports_it():
    """``maskpolicy`` (api/) re-exports lazily; a room importing it would pull every room into every import."""
    assert sorted(p.name for p in (ROOT / "api").iterdir() if p.suffix == ".py") == ["__init__.py"]
    assert {m for m, _ in imported_modules(ROOT / "api" / "__init__.py")} <= {"__future__", "importlib", "typing"}
    offenders = [f"{path.relative_to(ROOT)} imports {module or 'maskpolicy'}"
                 for room in ("policies", "tasks", "meta") for path in sorted((ROOT / room).rglob("*.py"))
                 for module, level in _top_level_imports(path) if level == 0 and module == "maskpolicy"]
    assert not offenders, "\n".join(offenders)


def _top_level_imports(path: Path) -> list[tuple[str, int]]:
    """Imports of the bare package: ``import maskpolicy`` and ``from maskpolicy import X`` for X not a room."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names if alias.name == "maskpolicy"]
        elif isinstance(node, ast.ImportFrom) and node.module == "maskpolicy" and node.level == 0:
            rooms = {"policies", "tasks", "meta", "conf"}
            found += [("maskpolicy", 0) for alias in node.names if alias.name not in rooms]
    return found


def test_policies_depend_on_torch_only():
    third_party = {m.split(".")[0] for p in (ROOT / "policies").rglob("*.py") for m, level in imported_modules(p)
                   if level == 0}
    assert third_party <= {"torch", "maskpolicy", "__future__", "collections", "dataclasses", "typing", "math",
                           "importlib", "itertools", "functools", "re"}, third_party


def test_the_root_holds_the_rooms_of_the_design():
    rooms = {p.name for p in ROOT.iterdir() if not p.name.startswith(".") and p.name not in ("build", "dist")}
    rooms -= {p for p in rooms if p.endswith(".egg-info") or p in ("outputs", "multirun")}
    # hydra_plugins: Hydra finds plugins only in that namespace package (the Optuna sweeper)
    # api: the package `maskpolicy` itself, its top-level names only (see api/__init__.py)
    assert rooms <= {"policies", "tasks", "meta", "conf", "api", "tests", "benchmarks", "hydra_plugins",
                     "pyproject.toml", "setup.py", "docs", "mkdocs.yml",
                     "README.md",
                     "Makefile", "LICENSE", "CONTRIBUTING.md"}, rooms
    assert {"policies", "tasks", "meta", "conf", "tests", "pyproject.toml", "README.md"} <= rooms


MAX_LINES = 400


def test_long_modules_say_why_in_their_docstring():
    too_long = []
    for room in ("policies", "tasks", "meta"):
        for path in sorted((ROOT / room).rglob("*.py")):
            text = path.read_text()
            docstring = ast.get_docstring(ast.parse(text)) or ""
            if text.count("\n") > MAX_LINES and "Why this module is long:" not in docstring:
                too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert not too_long, "split these modules, or say in their docstring 'Why this module is long: …'\n" + "\n".join(
        too_long)

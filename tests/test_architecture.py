"""The package's shape: stages import one way, prune/ needs no torch to import, and the files shipped inside
every export import nothing but torch, transformers and each other."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "skipprune"

# Lower numbers are lower stages: a module may import its own stage or lower ones, never a higher one.
STAGES = {
    "version": 0,
    "errors": 0,
    "system": 0,
    "data": 0,
    "remote": 0,  # the files shipped inside exports: they import no skipprune module (checked below)
    "prune": 1,
    "families": 2,  # the family study, which export and measure both use
    "records": 3,
    "formats": 4,  # the output formats, which the card, the export, search and heal ask
    "cards": 5,
    "export": 6,
    "measure": 7,
    "heal": 8,
    "demo": 9,
    "cli": 10,
    "__init__": 11,
    "__main__": 11,  # python -m skipprune (launchers): the command itself
}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        yield path, rel.parts


def stage_of(parts: tuple[str, ...]) -> str:
    return parts[0]


def imported_stages(path: Path, parts: tuple[str, ...], top_level_only: bool = False):
    """(stage, line, name) of every skipprune module `path` imports, function-level imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = parts[:-1]  # a module's package; for __init__ the package itself
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)] if node.level > 1 else package)
                target = base + (node.module.split(".") if node.module else [])
                names = [target + [a.name] for a in node.names] if not node.module else [target]
            elif node.module and node.module.split(".")[0] == "skipprune":
                names = [node.module.split(".")[1:]]
            else:
                yield None, node.lineno, node.module
                continue
            for target in names:
                yield (target[0] if target else "__init__"), node.lineno, ".".join(target)
        elif isinstance(node, ast.Import):
            for a in node.names:
                first, *rest = a.name.split(".")
                yield (rest[0] if first == "skipprune" and rest else None), node.lineno, a.name


def test_stages_import_one_way():
    upward = []
    for path, parts in modules():
        if parts[0] == "remote" and parts[-1] != "__init__":
            continue  # checked below: they import no skipprune module at all
        own = stage_of(parts)
        assert own in STAGES, f"{path}: a new top-level module needs a stage in STAGES"
        for target, line, name in imported_stages(path, parts):
            if target is None or target == own:
                continue
            if STAGES[target] > STAGES[own]:
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {name} ({own} -> {target})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_prune_imports_no_torch_at_module_level():
    for path, parts in modules():
        if parts[0] != "prune":
            continue
        heavy = [
            name
            for target, _, name in imported_stages(path, parts, top_level_only=True)
            if target is None and name and name.split(".")[0] in ("torch", "transformers", "numpy")
        ]
        assert not heavy, f"{path}: {heavy}"


SHIPPED = ["configuration_skipprune", "modeling_skipprune", "configuration_skipprune_nas", "modeling_skipprune_nas"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_files_import_only_torch_and_transformers(name):
    tree = ast.parse((PACKAGE / "remote" / f"{name}.py").read_text(encoding="utf-8"))
    allowed = {"torch", "transformers", *sys.stdlib_module_names}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert node.module in SHIPPED, ast.dump(node)
        elif isinstance(node, ast.ImportFrom):
            assert node.module.split(".")[0] in allowed, node.module
        elif isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] in allowed for a in node.names)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The direction test must be able to fail: a prune module importing from measure is caught."""
    fake = tmp_path / "skipprune"
    (fake / "prune").mkdir(parents=True)
    (fake / "prune" / "bad.py").write_text("def f():\n    from ..measure import evaluate\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    with pytest.raises(AssertionError, match=r"prune -> measure"):
        test_stages_import_one_way()

"""Where knowledge lives and which way imports go (DESIGN.md "Direction of dependencies").

Imports are read with ``ast`` from every module of the package (function-level imports included), so
a new import against the direction fails here, not in a review.
"""

import ast
import pathlib

import pytest

from megatron_evomoe.moe.routers import available_routers

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "megatron_evomoe"

COMPAT_USERS = {"initialize", "training.optimizer", "training.data_loading", "models.bert", "analysis.megatron_moe"}
"""The modules that adapt a megatron-core assumption through compat (device questions: device.py)."""

LEAVES = {"errors", "seeding", "device", "config_flags", "help_format", "progress"}
"""Modules below everything else: they import nothing of ours (but the error type)."""


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    path = PACKAGE.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _our_imports(path: pathlib.Path) -> set:
    """``megatron_evomoe.x.y`` modules imported anywhere in ``path``, as ``x.y``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name == "megatron_evomoe" or not name.startswith("megatron_evomoe."):
                continue
            inner = name[len("megatron_evomoe."):]
            if _is_module(inner):
                found.add(inner)
    return found


def _modules():
    return {_module_name(path): _our_imports(path) for path in PACKAGE.rglob("*.py")}


MODULES = _modules()


def _violations(importer_prefix: str, imported_prefixes: tuple) -> list:
    return sorted(
        f"{module} imports {imported}"
        for module, imports in MODULES.items()
        if module == importer_prefix or module.startswith(importer_prefix + ".")
        for imported in imports
        if imported.startswith(imported_prefixes)
    )


@pytest.mark.parametrize(
    "importer, forbidden",
    [
        ("moe", ("training", "models", "analysis", "export")),  # a transition returns what changed; training applies it
        ("training", ("analysis", "export")),  # what the dry run needs lives below both
        ("models", ("training", "analysis", "export")),
        ("data", ("training", "models", "moe", "analysis", "export")),
        ("compat", ("",)),  # compat imports nothing of ours: models use what it adapts
    ],
)
def test_imports_go_one_way(importer, forbidden):
    assert _violations(importer, forbidden) == []


def test_compat_is_imported_only_where_a_megatron_assumption_is_adapted():
    users = {module for module, imports in MODULES.items() if "compat" in imports}
    assert users <= COMPAT_USERS, users - COMPAT_USERS


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaf_modules_import_nothing_above_them(leaf):
    assert MODULES[leaf] <= {"errors"}


# ------------------------------------------------------------------------------ router knowledge
PHASE_NAMES = {"expert_diversify", "gate_sparsify", "top1", "stage1", "stage2"}
PHASE_CONSTANTS = {"EXPERT_DIVERSIFY", "GATE_SPARSIFY", "TOP1", "STAGE1", "STAGE2"}


def _files_outside_routers():
    for path in sorted(PACKAGE.rglob("*.py")):
        if "routers" not in path.relative_to(PACKAGE).parts[:2]:
            yield path
    yield from sorted(REPO.glob("*.py"))
    yield from sorted((REPO / "tools").glob("*.py"))


def _strings(node) -> set:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {s for element in node.elts for s in _strings(element)}
    return set()


def _router_knowledge(path: pathlib.Path) -> list:
    """Comparisons of a router (type) with a router name, of anything with a phase name, and tables
    keyed by router names."""
    routers = set(available_routers())
    phases_allowed = path == PACKAGE / "moe" / "schedule.py"  # EvoMoE's schedule, which the DTS router calls
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            strings = set().union(*(_strings(op) for op in operands))
            source = " ".join(ast.unparse(op) for op in operands if not _strings(op))
            if strings & routers and "router" in source:  # e.g. config.moe_router_type == "dts"
                found.append(f"{where}: {ast.unparse(node)}")
            names = {getattr(op, "id", getattr(op, "attr", None)) for op in operands}
            if not phases_allowed and (strings & PHASE_NAMES or names & PHASE_CONSTANTS):
                found.append(f"{where}: {ast.unparse(node)}")
        elif isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            if len(keys & routers) >= 2:
                found.append(f"{where}: a table keyed by router names")
    return found


def test_router_specific_knowledge_lives_in_the_routers_files():
    found = [hit for path in _files_outside_routers() for hit in _router_knowledge(path)]
    assert found == []

"""The package's rooms and which way their imports point (see docs/contributing.md).

Every ``import`` in every module counts, including the lazy ones inside functions: a lazy import
is still a dependency, only a deferred one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import snn_stp

PACKAGE = Path(snn_stp.__file__).parent

#: Each room and its floor. A module may import rooms on lower floors and its own room, never a
#: room on its own floor or above.
FLOORS = {
    "errors": 0, "files": 1, "plugins": 1, "rundir": 2,
    "pruning": 3,
    "snn": 4, "ann": 4, "data": 4,
    "model_registry": 3, "models": 5, "measure": 5,
    "train": 6,
    "analysis": 7, "launch": 7, "export": 7,
    "sweeps": 8,
    "cli": 9, "__main__": 10,
}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the snn_stp modules ``path`` imports (and third-party top-level names)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                as_module = PACKAGE.parent / Path(*candidate.split("."))
                found.add(candidate if as_module.with_suffix(".py").is_file() or as_module.is_dir() else module)
    return found


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_room_has_a_floor():
    rooms = {_room(_module_name(p)) for p in _modules()} - {"__init__"}
    assert rooms <= set(FLOORS), f"new room(s) {sorted(rooms - set(FLOORS))}: give them a floor in FLOORS"


def test_imports_point_down_only():
    upward = []
    for path in _modules():
        source = _module_name(path)
        room = _room(source)
        for target in _imports(path):
            if not target.startswith("snn_stp"):
                continue
            other = _room(target)
            if room == "__init__":
                allowed = other == "pruning"  # the package re-exports the pruning core only
            else:
                allowed = other == room or (other != "__init__" and FLOORS[other] < FLOORS[room])
            if not allowed:
                upward.append(f"{source} -> {target}")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_the_pruning_core_imports_torch_and_the_standard_library_only():
    outside = set()
    for path in (PACKAGE / "pruning").rglob("*.py"):
        for target in _imports(path):
            top = target.split(".")[0]
            if top not in ("torch", "snn_stp", "__future__") and top not in sys.stdlib_module_names:
                outside.add(f"{_module_name(path)} -> {target}")
            elif top == "snn_stp" and _room(target) != "pruning":
                outside.add(f"{_module_name(path)} -> {target}")
    assert not outside, sorted(outside)

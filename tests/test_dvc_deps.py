"""dvc.yaml names what affects each stage: every project module its entry module imports
(transitively, lazy imports inside functions included) is covered by its deps, and every
section of conf/config.yaml that code reads (``cfg.<section>``) is in its params. Derived from
the code with ``ast``, so a new module or a new setting that a stage starts to use fails here
until dvc.yaml says so."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGE = "pipeline"
# Reached only through `-m` (pipeline/cli.py): the sweep machinery fans jobs out, each of which
# runs the same single-run path; dvc.yaml's commands never pass -m, so it shapes no output.
NOT_UNDER_DVC = {"pipeline.sweeps"}


def module_file(name: str) -> Path | None:
    parts = name.split(".")
    base = REPO.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """Project modules ``path`` imports anywhere in its body (``from pipeline import x`` names
    a module when pipeline/x is one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == PACKAGE:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if module_file(f"{node.module}.{a.name}")}
    # a submodule import also runs its packages' __init__
    return {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 2)}


def closure(entry: str) -> set[Path]:
    seen: set[str] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None or \
                any(name == m or name.startswith(m + ".") for m in NOT_UNDER_DVC):
            continue
        seen.add(name)
        todo += imported_modules(module_file(name))
    return {module_file(n) for n in seen}


def settings_read(files: set[Path], sections: set[str]) -> set[str]:
    """``section`` for code that takes a whole section (``to_dict(cfg.convert)``), else
    ``section.key`` for each ``cfg.section.key`` read. Reads inside ``validate`` functions (they
    reject a bad value for every stage and shape no output) do not count."""
    read = set()
    for path in files:
        tree = ast.parse(path.read_text())
        skip = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                and f.name == "validate" for n in ast.walk(f)}
        parents = {id(c): n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id == "cfg" and node.attr in sections and id(node) not in skip:
                parent = parents.get(id(node))
                key = parent.attr if isinstance(parent, ast.Attribute) else None
                read.add(node.attr if key is None or key == "get" else f"{node.attr}.{key}")
    return read


def uncovered(read: set[str], params: set[str]) -> set[str]:
    return {r for r in read if r not in params and r.split(".")[0] not in params}


def stages() -> list[tuple[str, dict]]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return [(name, stage.get("do", stage)) for name, stage in spec.items()]


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name,stage", stages(), ids=[n for n, _ in stages()])
def test_stage_deps_and_params_cover_what_it_imports_and_reads(name, stage):
    entry = re.search(r"python -m (pipeline\.\w+)", stage["cmd"]).group(1)
    files = closure(entry)
    assert module_file(entry) in files and len(files) >= 2
    deps = [d for d in stage.get("deps", []) if isinstance(d, str)]
    missing = sorted(p.relative_to(REPO).as_posix() for p in files
                     if not covered(p, deps) and p.name != "__init__.py" or
                     p.name == "__init__.py" and p.stat().st_size > 200 and not covered(p, deps))
    assert not missing, f"stage {name}: dvc.yaml deps lack {missing}"
    config = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())
    sections = {k for k in config if k != "defaults"}
    params: set[str] = set()
    for p in stage.get("params", []):
        if isinstance(p, str):
            params.add(p)
        else:
            for keys in p.values():
                params |= set(keys)
    unread = sorted(uncovered(settings_read(files, sections), params))
    assert not unread, f"stage {name}: dvc.yaml params lack conf/config.yaml sections {unread}"


def test_the_walk_finds_lazy_imports_and_settings():
    """The derivation itself: convert imports search inside a function, and search reads
    cfg.search, cfg.evaluate (the emulator's device) and cfg.tracking."""
    files = {p.relative_to(REPO).as_posix() for p in closure("pipeline.convert")}
    assert {"pipeline/search.py", "pipeline/precision.py", "pipeline/emulator/runtime.py"} <= files
    config = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())
    read = settings_read({REPO / "pipeline" / "search.py"}, set(config))
    assert {"search.max_evaluations", "evaluate.device", "tracking.uri"} <= read
    assert uncovered(read, {"search"}) == {"evaluate.device"} | {
        r for r in read if r.split(".")[0] not in ("search", "evaluate")}

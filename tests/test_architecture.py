"""The shape the file tree promises: stage modules do not import each other; only build.py
composes them; only cli.py prints."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
STAGES = {"fetch", "encode", "fingerprint", "render", "minify", "publish"}
SHARED = {"model", "errors"}


def pipeline_imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            found.add((node.module or "").split(".")[-1])
    return found


def test_stage_modules_import_only_model_and_errors() -> None:
    for stage in sorted(STAGES):
        assert pipeline_imports(stage) <= SHARED, f"{stage}.py imports {pipeline_imports(stage) - SHARED}"


def test_only_build_composes_the_stages() -> None:
    composers = {p.stem: pipeline_imports(p.stem) & STAGES for p in PACKAGE.glob("*.py")}
    composers = {name: stages for name, stages in composers.items() if stages}
    # worker.py is the encode stage's process shell: it may import encode and nothing else.
    assert composers == {"build": composers["build"], "worker": {"encode"}}


def test_only_cli_prints() -> None:
    for path in PACKAGE.glob("*.py"):
        if path.stem in ("cli", "__main__"):
            continue
        calls = [n for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "print"]
        assert not calls, f"{path.name} prints"

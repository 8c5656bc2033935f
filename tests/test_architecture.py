"""The shape the file tree promises: stage modules do not import each other; only build.py
composes them; only cli.py prints."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
STAGES = {"fetch", "encode", "fingerprint", "render", "minify", "publish", "bucket"}  # bucket: the S3 Target
SHARED = {"model", "errors", "files"}  # the vocabulary, the error tree, the one way to write a file
# the pre-switch gate, the retention rule, fetch's connections to checked addresses only,
# encode's decoded and resized pixels and its SSIM and quality searches
OWN_HELPERS = {
    "publish": {"gate", "retention"},
    "bucket": {"retention"},
    "fetch": {"connections"},
    "encode": {"pixels", "quality"},
}


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
        allowed = SHARED | OWN_HELPERS.get(stage, set())
        assert pipeline_imports(stage) <= allowed, f"{stage}.py imports {pipeline_imports(stage) - allowed}"
    for helper in sorted(set().union(*OWN_HELPERS.values())):
        assert pipeline_imports(helper) <= SHARED, f"{helper}.py imports {pipeline_imports(helper) - SHARED}"


def test_only_build_composes_the_stages() -> None:
    composers = {p.stem: pipeline_imports(p.stem) & STAGES for p in PACKAGE.glob("*.py")}
    composers = {name: stages for name, stages in composers.items() if stages}
    # encode_pool.py is the build's encode fan-out: it may import encode and nothing else.
    assert composers == {"build": composers["build"], "encode_pool": {"encode"}}


def test_only_cli_prints() -> None:
    for path in PACKAGE.glob("*.py"):
        if path.stem in ("cli", "__main__"):
            continue
        calls = [
            n
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "print"
        ]
        assert not calls, f"{path.name} prints"


def test_config_package_imports_only_model_and_errors_and_never_prints() -> None:
    # pipeline/config/ is a package (one reader per input file), which the walks above do not enter.
    for path in sorted((PACKAGE / "config").glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:  # from ..x import y, from .. import x
                found |= {node.module} if node.module else {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "pipeline":
                found |= {node.module.split(".")[1]} if "." in node.module else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {(a.name + ".").split(".")[1] for a in node.names if a.name.split(".")[0] == "pipeline"}
            assert not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print"), f"{path.name} prints"
        found -= {"config"}  # its own modules, imported absolutely
        assert found <= {"model", "errors"}, f"config/{path.name} imports {found - {'model', 'errors'}}"


def test_the_preview_server_imports_nothing_of_ours() -> None:
    # The HTTP side of `pipeline serve` knows only what serve.py's loop tells it (State.update).
    assert pipeline_imports("preview_server") == set()

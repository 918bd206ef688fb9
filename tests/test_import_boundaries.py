"""Import boundaries (docs in /work/shared/STYLE.md): MLflow is imported by tracking.py alone."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

MLFLOW_HOME = REPO / "src" / "visionflow" / "tracking.py"


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level package) of every ``import x`` and ``from x import y``, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def mlflow_imports(source: str, name: str = "<source>") -> list[int]:
    return [line for line, module in imported_modules(ast.parse(source, name)) if module == "mlflow"]


def test_the_scan_finds_mlflow_imports_at_any_depth():
    source = "import os\nimport mlflow.pytorch\ndef f():\n    from mlflow import MlflowClient\n" \
             "import mlflow_extras\nfrom . import mlflow\n"
    assert mlflow_imports(source) == [2, 4]


def test_only_tracking_imports_mlflow():
    files = sorted([*(REPO / "src").rglob("*.py"), *(REPO / "pipelines").rglob("*.py")])
    assert MLFLOW_HOME in files
    offenders = [f"{path.relative_to(REPO)}:{line}" for path in files if path != MLFLOW_HOME
                 for line in mlflow_imports(path.read_text(), str(path))]
    assert not offenders, f"mlflow imported outside src/visionflow/tracking.py: {offenders}"

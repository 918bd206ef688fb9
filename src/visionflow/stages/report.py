"""report: one page (reports/index.html) and one terminal table over every enabled family.

Runs after every family's evaluate and register; reads only their outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

from visionflow.config import Params
from visionflow.report import REPORT_HTML, headline_rows, render_html, summary_table
from visionflow.tasks import get_task


def _sections(params: Params, root: Path) -> dict:
    return {task: headline_rows(task, get_task(task).headlines, root) for task in params.tasks}


def summary(params: Params, root: Path) -> str:
    """The headline table: a row per family and number, with target, verdict and baseline."""
    return summary_table([row for rows in _sections(params, root).values() for row in rows])


def run(params: Params, root: Path) -> dict:
    sections = _sections(params, root)
    target = root / REPORT_HTML
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.tmp")
    partial.write_text(render_html(sections, root))
    os.replace(partial, target)  # a reader never sees half a page
    rows = [row for family_rows in sections.values() for row in family_rows]
    return {"report": str(target.relative_to(root)), "families": len(sections),
            "targets_met": sum(row.met is True for row in rows),
            "targets_missed": [f"{row.task} {row.headline.label}" for row in rows if row.met is False]}

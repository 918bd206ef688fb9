"""One page and one terminal table for every family: headline metrics against target and baseline.

``write_report`` reads what the stages wrote (``metrics/<task>.json``, ``models/<task>/train.json``
and ``registered.json``, the PNGs under ``reports/<task>/``) and writes ``reports/index.html``: a
self-contained page (images inlined as data URIs, no script, no CDN) that opens offline.
``summary_table`` is the same headline rows as plain text for the end of ``make repro``.

Which numbers matter is the family's call (``TaskFamily.headlines``); this module only lays
them out, so it never names a family.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionflow.paths import TaskPaths
from visionflow.tasks.base import Headline

REPORT_HTML = Path("reports/index.html")
IMAGE_MAX_WIDTH = 960  # px; overlays are downscaled to keep the page a few MB


@dataclass(frozen=True)
class HeadlineRow:
    task: str
    headline: Headline
    value: float | None
    baseline_value: float | None

    @property
    def met(self) -> bool | None:
        """Whether ``value`` meets the target; None when there is no target or no value."""
        target = self.headline.target
        if target is None or self.value is None:
            return None
        return self.value >= target if self.headline.higher_is_better else self.value <= target


def lookup(metrics: dict, dotted: str) -> float | None:
    """``metrics["a"]["b"]`` for ``"a.b"`` (a key that itself holds a dot, ``"PCK@0.1"``, is
    matched whole first); None where a key is missing or the value is not a number."""
    if dotted in metrics:
        node = metrics[dotted]
        return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None
    head, _, rest = dotted.partition(".")
    if rest and isinstance(metrics.get(head), dict):
        return lookup(metrics[head], rest)
    return None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def headline_rows(task: str, headlines: tuple[Headline, ...], root: Path) -> list[HeadlineRow]:
    metrics = _read_json(TaskPaths(task, root).metrics)
    return [HeadlineRow(task, h, lookup(metrics, h.key), lookup(metrics, h.baseline) if h.baseline else None)
            for h in headlines]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _target(headline: Headline) -> str:
    if headline.target is None:
        return ""
    return f"{'>=' if headline.higher_is_better else '<='} {headline.target:g}"


def _verdict(row: HeadlineRow) -> str:
    return {True: "met", False: "MISSED", None: ""}[row.met]


def summary_table(rows: list[HeadlineRow]) -> str:
    """A plain-text table, one line per headline number, for a terminal."""
    header = ("family", "metric", "value", "target", "", "baseline")
    lines = [header] + [(r.task, r.headline.label, _number(r.value), _target(r.headline), _verdict(r),
                         f"{_number(r.baseline_value)} ({r.headline.baseline_label})" if r.headline.baseline else "")
                        for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def _baseline(row: HeadlineRow) -> str:
    if not row.headline.baseline:
        return ""
    return html.escape(f"{_number(row.baseline_value)} ({row.headline.baseline_label})")


def _image_data_uri(path: Path) -> str:
    """``path`` as an inline image, downscaled to ``IMAGE_MAX_WIDTH`` (JPEG when that is smaller)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.width > IMAGE_MAX_WIDTH:
            image = image.resize((IMAGE_MAX_WIDTH, round(image.height * IMAGE_MAX_WIDTH / image.width)))
        encoded = {}
        for kind, options in (("png", {"optimize": True}), ("jpeg", {"quality": 85})):
            buffer = io.BytesIO()
            image.save(buffer, format=kind.upper(), **options)
            encoded[kind] = buffer.getvalue()
    kind = min(encoded, key=lambda k: len(encoded[k]))
    return f"data:image/{kind};base64,{base64.b64encode(encoded[kind]).decode()}"


def _figure(path: Path, root: Path) -> str:
    caption = html.escape(str(path.relative_to(root)))
    return (f'<figure><img alt="{caption}" src="{_image_data_uri(path)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _family_section(task: str, rows: list[HeadlineRow], root: Path) -> str:
    paths = TaskPaths(task, root)
    train, registered = _read_json(paths.train_summary), _read_json(paths.registered)
    metric_rows = "".join(
        f"<tr><td>{html.escape(r.headline.label)}</td><td class=num>{_number(r.value)}</td>"
        f"<td>{_target(r.headline)}</td><td class={_verdict(r).lower() or 'none'}>{_verdict(r)}</td>"
        f"<td>{_baseline(r)}</td></tr>" for r in rows)
    facts = {
        "training": (f"{train['epochs']} epochs, {train['global_steps']} steps, {train['seconds']:.0f} s on "
                     f"{train.get('runtime', {}).get('device_type', '?')}") if train else "not trained",
        "trained by MLflow run": train.get("mlflow_run_id", "-"),
        "started from backbone": train.get("pretrained_backbone") or "random init",
        "registered": (f"{registered['model_name']} v{registered['version']} (this run); champion "
                       f"v{registered['champion_version']} ({registered['metric_name']} {registered['metric']:.4g})")
                      if registered else "not registered",
    }
    shown = {"family", "backbone", "train_run_id"}  # already in the rows above
    facts.update({f"lineage: {key}": value for key, value in registered.get("provenance", {}).items()
                  if key not in shown})
    fact_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    images = [p for p in (paths.train_curves_png, *sorted(paths.eval_reports.glob("*.png"))) if p.is_file()]
    figures = "".join(_figure(p, root) for p in images)
    return (f'<section id="{task}"><h2>{html.escape(task)}</h2>'
            f"<table><tr><th>metric</th><th>value</th><th>target</th><th></th><th>baseline</th></tr>"
            f"{metric_rows}</table><table class=facts>{fact_rows}</table>{figures}</section>")


_STYLE = """body{font:15px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1000px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border-bottom:1px solid #ddd;padding:.2em .7em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.met{color:#176f2c}td.missed{color:#b00020;font-weight:600}
table.facts th{font-weight:normal;color:#666}img{max-width:100%}figure{margin:1em 0}
figcaption{color:#666;font-size:90%}section{border-top:2px solid #333;margin-top:2em}"""


def render_html(sections: dict[str, list[HeadlineRow]], root: Path, title: str = "visionflow report") -> str:
    """The whole page: an overview table of every family's headline numbers, then one section each."""
    overview = "".join(
        f'<tr><td><a href="#{task}">{html.escape(task)}</a></td><td>{html.escape(r.headline.label)}</td>'
        f"<td class=num>{_number(r.value)}</td><td>{_target(r.headline)}</td>"
        f"<td class={_verdict(r).lower() or 'none'}>{_verdict(r)}</td><td>{_baseline(r)}</td></tr>"
        for task, rows in sections.items() for r in rows)
    body = "".join(_family_section(task, rows, root) for task, rows in sections.items())
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<table><tr><th>family</th><th>metric</th><th>value</th><th>target</th><th></th><th>baseline</th></tr>"
            f"{overview}</table>"
            f"{body}</body></html>\n")

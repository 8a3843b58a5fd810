"""One self-contained HTML page of every figure and metric (`reports/index.html`).

Figures are embedded as base64 PNGs and tables are plain HTML, so the page opens offline and
can be mailed around as one file. It reads only what earlier stages wrote.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from grokpipe.io import PARTIAL_SUFFIX

# the per-condition table's columns: a selection of `grokking.RUN_FIELDS` (the page also
# holds each metrics file whole, folded under the table)
TABLE_FIELDS = (
    "memorized_at",
    "grokked_at",
    "delay",
    "final_train_acc",
    "final_val_acc",
    "end_val_acc",
    "post_grok_drops",
)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return html.escape(str(v))


def _stat(entry: dict) -> str:
    if not isinstance(entry, dict) or entry.get("mean") is None:
        return "never" if isinstance(entry, dict) else _fmt(entry)
    spread = f" ± {_fmt(entry['std'])}" if entry.get("n", 0) > 1 else ""
    return f"{_fmt(entry['mean'])}{spread}"


def conditions_table(metrics: dict) -> str:
    head = "".join(f"<th>{f.replace('_', ' ')}</th>" for f in TABLE_FIELDS)
    rows = []
    for cond, c in metrics.get("conditions", {}).items():
        cells = "".join(f"<td>{_stat(c[f])}</td>" for f in TABLE_FIELDS)
        rows.append(
            f"<tr><td>{html.escape(cond)}</td><td>{c['grokked_seeds']}/{c['seeds']}"
            f"</td>{cells}</tr>"
        )
    return (
        f"<table><tr><th>condition</th><th>grokked seeds</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
    )


def _figures(folder: Path) -> str:
    out = []
    for png in sorted(folder.glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode()
        out.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{png.stem}">'
            f"<figcaption>{html.escape(png.name)}</figcaption></figure>"
        )
    return "".join(out)


def _json_block(obj) -> str:
    return f"<pre>{html.escape(json.dumps(obj, indent=1))}</pre>"


def build(reports: Path) -> str:
    metrics_dir, figures_dir = reports / "metrics", reports / "figures"
    sections = []
    for path in sorted(metrics_dir.glob("*.json")):
        name = path.stem
        m = json.loads(path.read_text())
        title = html.escape(m.get("title", name)) if isinstance(m, dict) else name
        body = [f'<h2 id="{name}">{title} <small>({name})</small></h2>']
        if isinstance(m, dict) and "conditions" in m:
            s = m["summary"]
            body.append(
                f"<p>{s['grokked_runs']}/{s['runs']} runs grokked (validation ≥ 99 %); "
                f"median grokked at {_fmt(s['median_grokked_at'])}; preset "
                f"{html.escape(str(m.get('preset')))}; "
                f"{m['timing']['model_steps']:,} model-steps in "
                f"{m['timing']['train_seconds']:.0f} s of training.</p>"
            )
            for kind, a in (m.get("analyses") or {}).items():
                body.append(f"<p><b>{html.escape(kind)}</b>: {html.escape(a['verdict'])}</p>")
            body.append(conditions_table(m))
            # the table is a selection: every field, the analyses' facts and the timings too
            body.append(
                f"<details><summary>all metrics ({html.escape(path.name)})</summary>"
                f"{_json_block(m)}</details>"
            )
        else:
            body.append(_json_block(m))
        if (figures_dir / name).is_dir():
            body.append(_figures(figures_dir / name))
        sections.append("<section>" + "".join(body) + "</section>")
    listed = {p.stem for p in metrics_dir.glob("*.json")}
    folders = (p for p in figures_dir.iterdir() if p.is_dir())
    for folder in sorted(p for p in folders if not p.name.endswith(PARTIAL_SUFFIX)):
        if folder.name not in listed:
            sections.append(
                f'<section><h2 id="{folder.name}">{folder.name}</h2>{_figures(folder)}</section>'
            )
    toc = "".join(
        f'<li><a href="#{p.stem}">{p.stem}</a></li>' for p in sorted(metrics_dir.glob("*.json"))
    )
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "td:first-child{text-align:left}img{max-width:100%}figure{margin:1em 0}"
        "pre{background:#f6f6f6;padding:1em;font-size:12px;overflow:auto}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>grokpipe report</title>"
        f"<style>{style}</style></head><body><h1>grokpipe: grokking reproductions</h1>"
        f"<ul>{toc}</ul>{''.join(sections)}</body></html>"
    )

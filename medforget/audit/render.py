"""Rendering shared by both audits: numbers and plain-text tables for the console, one list of blocks rendered to
Markdown and to a self-contained HTML page (:func:`write_documents`, atomically), the blocks both reports share, and
matplotlib figures (PNG) with ROC panels.

A block is a tuple: ``("h1"|"h2"|"h3"|"p", text)``, ``("list", items)``, ``("table", header, rows)``,
``("img", file, caption)`` or ``("code", text)``.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medforget.audit.roc import roc
from medforget.core.io import atomic_write_text, json_safe

COLORS = {"original": "#d62728", "unlearned": "#1f77b4", "retrained": "#2ca02c"}


Block = tuple  # ("h1"|"h2"|"h3"|"p", text) | ("table", header, rows) | ("img", file, caption) | ("code", text)


def num(x: Any, signed: bool = False) -> str:
    """A number to 3 decimals (``signed``: with its sign), ``n/a`` for ``None`` and NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def criterion_value(value: Any, tolerance: float) -> str:
    """A criterion's value to 3 decimals, or to 5 where 3 would print it equal to the tolerance it fails or passes
    by less than the rounding (e.g. 0.89951 against ``>= 0.9``)."""
    text = num(value)
    if text != "n/a" and value != tolerance and float(text) == round(tolerance, 3):
        return f"{value:.5f}"
    return text


def interval_text(values: Any, signed: bool = True, digits: int = 3, missing: str = "n/a",
                  nan_missing: bool = False) -> str:
    """``[lo, hi]`` of an interval (``signed``: ``[+lo, +hi]``); ``missing`` when it is not a pair of numbers (and,
    with ``nan_missing``, when an end is NaN)."""
    if not isinstance(values, list) or len(values) != 2 or any(v is None for v in values):
        return missing
    if nan_missing and any(math.isnan(v) for v in values):
        return missing
    sign = "+" if signed else ""
    return f"[{values[0]:{sign}.{digits}f}, {values[1]:{sign}.{digits}f}]"


def cell(node: Any, signed: bool = False) -> str:
    """``mean ± std`` of an aggregate leaf (just the mean for one run)."""
    if not isinstance(node, dict) or "mean" not in node:
        return "n/a"
    text = num(node["mean"], signed)
    if node.get("n", 0) > 1 and text != "n/a":
        text += f" ± {node['std']:.3f}"
    return text


def get_path(tree: Any, *path: str) -> Any:
    """The node at ``path`` of nested dicts (``None`` where absent)."""
    for p in path:
        if not isinstance(tree, dict) or p not in tree:
            return None
        tree = tree[p]
    return tree


def figure(nrows: int, ncols: int, width: float = 3.2, height: float = 2.8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return plt, fig, axes


def save_figure(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_roc_panels(panels: dict[str, list[tuple[str, Any, Any, dict[str, Any]]]], path: Path, ncols: int,
                    nonmembers: str, legend_size: int = 7) -> Path | None:
    """One ROC panel per attack: ``{title: [(label, member_scores, nonmember_scores, line style), ...]}``, with the
    chance diagonal; the x axis names the non-member set."""
    if not panels:
        return None
    ncols = min(ncols, len(panels))
    plt, fig, axes = figure(math.ceil(len(panels) / ncols), ncols)
    for ax, (title, curves) in zip(axes.flat, panels.items(), strict=False):
        for label, members, others, style in curves:
            fpr, tpr = roc(members, others)
            ax.plot(fpr, tpr, label=label, **style)
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
        ax.set(title=title, xlabel=f"FPR ({nonmembers})", ylabel="TPR (forget)", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=legend_size, loc="lower right")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return save_figure(plt, fig, path)


def provenance_line(report: dict[str, Any]) -> str:
    """When and by which code the report was made."""
    code = report["code"]
    return (f"created {report['created']}; medforget {code['medforget']}, commit {code.get('git_commit') or 'unknown'}"
            + (" (modified tree)" if code.get("git_dirty") else ""))


def closing_blocks(report: dict[str, Any], title: str, hashes: Sequence[str]) -> list[Block]:
    """The report's configuration and, under ``title``, the forget request's salted hashes."""
    return [("h2", "Configuration"), ("code", json.dumps(json_safe(report["config"]), indent=2)), ("h2", title),
            ("code", "\n".join(hashes))]


def write_documents(out: str | Path, stem: str, blocks: Callable[[dict[str, str]], list[Block]],
                    plots: Sequence[tuple[str, Callable[[Any, Path], Path | None], Any]] = (), prefix: str = "",
                    title: str = "medforget audit") -> dict[str, Any]:
    """Draw ``plots`` (``(key, plot function, its input)``; none: no ``plots/``) to ``<out>/plots/<prefix><key>.png``
    and write ``<stem>.md`` and a self-contained ``<stem>.html`` (the PNGs embedded) atomically from one list of
    blocks, ``blocks(images)`` (``images``: the drawn plots' relative paths by key). Returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, str] = {}
    if plots:
        (out / "plots").mkdir(exist_ok=True)
        for key, plot, data in plots:
            name = f"plots/{prefix}{key}.png"
            if plot(data, out / name) is not None:
                images[key] = name
    items = blocks(images)
    atomic_write_text(out / f"{stem}.md", to_markdown(items))
    atomic_write_text(out / f"{stem}.html", to_html(items, out, title=title))
    return {"markdown": out / f"{stem}.md", "html": out / f"{stem}.html", "plots": images}


def to_markdown(items: list[Block]) -> str:
    lines: list[str] = []
    for item in items:
        kind = item[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + item[1], ""]
        elif kind == "p":
            lines += [item[1], ""]
        elif kind == "list":
            lines += [f"- {x}" for x in item[1]] + [""]
        elif kind == "table":
            header, rows = item[1], item[2]
            lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            lines += [f"![{item[2]}]({item[1]})", "", f"*{item[2]}*", ""]
        elif kind == "code":
            lines += ["```", item[1], "```", ""]
    return "\n".join(lines)


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def _inline_md(text: str) -> str:
    """``**bold**`` and backticks of our own paragraphs, after escaping."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def to_html(items: list[Block], root: Path, title: str = "medforget audit") -> str:
    body: list[str] = []
    for item in items:
        kind = item[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(item[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline_md(item[1])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline_md(x)}</li>" for x in item[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in item[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                           for row in item[2])
            cls = ' class="criteria"' if item[1] and item[1][-1] == "result" else ""
            body.append(f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((root / item[1]).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(item[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(item[2])}</figcaption></figure>")
        elif kind == "code":
            body.append(f"<pre>{html.escape(item[1])}</pre>")
    style = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}pre{background:#f6f6f6;
padding:.7em;overflow-x:auto;font-size:12px}img{max-width:100%}figcaption{font-size:12px;color:#555}"""
    html_text = "\n".join(body)
    html_text = html_text.replace("<td>PASS</td>", '<td style="color:#1a7f37;font-weight:bold">PASS</td>')
    html_text = html_text.replace("<td>FAIL</td>", '<td style="color:#c62828;font-weight:bold">FAIL</td>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n{html_text}\n</body></html>\n")


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(cells))

    return "\n".join([line(header), "-" * len(line(header)), *[line(r) for r in rows]])

"""Renderers of a diff report dict (``Report.to_dict()``): Markdown for CI summaries and one
self-contained HTML file."""
from .html import render_html
from .markdown import render_markdown

__all__ = ["render_markdown", "render_html", "write_html", "write_markdown"]


def write_html(report: dict, path, **options) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(render_html(report, **options))


def write_markdown(report: dict, path, **options) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(render_markdown(report, **options))

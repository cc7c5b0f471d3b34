"""Every rendering of a report, and nothing that makes one: the diff report on a terminal
(``terminal``), as Markdown for CI summaries (``markdown``) and as one self-contained HTML file
(``html``) from its dict (``Report.to_dict()``); the check report on a terminal
(``check_terminal``). Renderers import nothing from compare/, checks/ or the adapters."""
from .html import render_html
from .markdown import render_markdown

__all__ = ["render_markdown", "render_html", "write_html", "write_markdown"]


def write_html(report: dict, path, **options) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(render_html(report, **options))


def write_markdown(report: dict, path, **options) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(render_markdown(report, **options))

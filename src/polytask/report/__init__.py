"""One self-contained HTML page for runs and studies: ``polytask report RUN_OR_STUDY ... -o
report.html``. The page embeds plotly.js (the ``report`` extra) and inline SVG fallbacks, so it
opens anywhere without network and reads without JavaScript."""

from polytask.report.build import write_report

__all__ = ["write_report"]

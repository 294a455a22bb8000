"""Drawing a chart twice: a static SVG (matplotlib, always shown first, readable without
JavaScript) and an interactive plotly figure (JSON for plotly.js, embedded in the page)."""

from __future__ import annotations

import io
import re
from typing import Any

from polytask.report.charts import Chart, Series

# tab10 then the light tab20 shades: distinct for up to 20 runs, then repeating
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip
MUTED, FRONT = "#9a9a9a", "#d62728"


class Palette:
    """One colour per run across every chart of a report."""

    def __init__(self) -> None:
        self.assigned: dict[str, str] = {}

    def color(self, series: Series, index: int) -> str:
        if series.emphasis:
            return FRONT
        if series.mode == "markers" and series.color_key is None:
            return MUTED
        key = series.color_key or f"#series-{index}"
        if key not in self.assigned:
            self.assigned[key] = PALETTE[len(self.assigned) % len(PALETTE)]
        return self.assigned[key]


def svg(chart: Chart, palette: Palette) -> str:
    """The chart as an inline SVG element (text kept as text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = len(chart.series) > 6
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": chart.key}):
        figure, axes = plt.subplots(figsize=(8.6 if many else 7.0, 4.0))
        for index, series in enumerate(chart.series):
            color = palette.color(series, index)
            size = 7 if series.emphasis else 4
            if series.mode == "markers":
                axes.scatter(series.x, series.y, s=size * 5, color=color, label=series.name)
            else:
                marker = "o" if "markers" in series.mode else None
                width = 2.2 if series.emphasis else 1.4
                axes.plot(series.x, series.y, color=color, marker=marker, markersize=size,
                          linewidth=width, label=series.name)  # fmt: skip
            if series.emphasis and series.text:
                for x, y, text in zip(series.x, series.y, series.text, strict=True):
                    axes.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4),
                                  fontsize=7)  # fmt: skip
        axes.set_title(chart.title, fontsize=10)
        axes.set_xlabel(chart.x_label)
        axes.set_ylabel(chart.y_label)
        axes.grid(alpha=0.3)
        if many:
            axes.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        elif chart.series:
            axes.legend(fontsize=7)
        figure.tight_layout()
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
        plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype


def plotly_json(chart: Chart, palette: Palette) -> str:
    """The chart as a plotly figure, JSON for ``Plotly.newPlot``; safe inside a script tag."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for index, series in enumerate(chart.series):
        color = palette.color(series, index)
        figure.add_trace(
            go.Scatter(
                x=series.x,
                y=series.y,
                mode=series.mode,
                name=series.name,
                text=series.text,
                hovertemplate=_hover(series),
                marker={"color": color, "size": 10 if series.emphasis else 7},
                line={"color": color, "width": 3 if series.emphasis else 1.8},
            )
        )
    figure.update_layout(
        title={"text": chart.title, "font": {"size": 14}},
        xaxis_title=chart.x_label,
        yaxis_title=chart.y_label,
        template="plotly_white",
        height=420,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"font": {"size": 10}},
    )
    return figure.to_json().replace("<", "\\u003c")  # JSON that cannot close its <script>


def _hover(series: Series) -> str:
    name = series.name.replace("%", "%%")
    text = "%{text}<br>" if series.text else ""
    return f"{text}x %{{x}}<br>y %{{y}}<extra>{name}</extra>"


def embedded_plotly() -> str:
    """plotly.js itself, minified, from the plotly package (no network when the page opens);
    a ``</script`` inside it (only possible in a string) would end the element early."""
    from plotly.offline import get_plotlyjs

    return re.sub(r"</(script)", r"<\\/\1", get_plotlyjs(), flags=re.IGNORECASE)


def figure_payload(chart: Chart, palette: Palette) -> dict[str, Any]:
    return {"key": chart.key, "svg": svg(chart, palette), "json": plotly_json(chart, palette)}

import datetime as dt
import re

import pandas as pd
import plotly.graph_objects as go

from explorer.report import SIGN_CONVENTION, ReportSection, build_report, table_html

EVIL = '<script>alert("x")</script><br /><img src=x onerror=alert(1)>'


def _report():
    fig = go.Figure(go.Bar(x=[EVIL, "b"], y=[1, -1]))
    table = pd.DataFrame({"text": [EVIL, "fine"], "influence": [0.123456, -2.0]})
    sections = [
        ReportSection("Heatmap " + EVIL, text="First.\n\nSecond " + EVIL, figure=fig),
        ReportSection("Pairs", table=table),
        ReportSection("Another figure", figure=go.Figure(go.Scatter(x=[1], y=[2]))),
    ]
    return build_report(
        "Report " + EVIL, {"model": EVIL, "train reviews": 40}, sections, generated=dt.datetime(2024, 1, 2)
    )


def test_report_escapes_every_text():
    page = _report()
    assert "<img" not in page
    assert '<script>alert("x")' not in page and "<br />" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;br /&gt;" in page
    assert "onerror=alert(1)&gt;" in page


def test_report_inlines_plotly_once_and_has_structure():
    page = _report()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"<script[^>]*\bsrc=", page)  # plotly.js is inlined: opens offline
    assert page.count("Plotly.newPlot") == 2
    assert page.count("* plotly.js v") == 1
    assert SIGN_CONVENTION.split("(")[0] in page
    assert "<h2>Pairs</h2>" in page and "0.1235" in page
    assert "2024-01-02 00:00" in page
    assert page.count("<p>") >= 2


def test_table_html_truncates_with_note():
    out = table_html(pd.DataFrame({"a": range(10)}), max_rows=3)
    assert out.count("<tr") == 4 and "First 3 of 10 rows." in out


def test_tables_break_words_only_in_long_text_cells():
    frame = pd.DataFrame({"kind": ["harmful", "helpful"], "influence": [-0.5, 0.25],
                          "text": ["a long review " * 10, "short"]})
    out = table_html(frame)
    assert out.count('<td class="long">') == 2  # the text column, and only it
    assert "<td>harmful</td>" in out and "<td>-0.5</td>" in out
    page = build_report("r", {}, [ReportSection("t", table=frame)])
    css = page[page.index("<style>"):page.index("</style>")]
    assert "word-break:normal" in css and "overflow-wrap:normal" in css
    # only long cells may wrap anywhere (that broke "harmful" into "harmf/ul" in narrow columns)
    assert [rule for rule in css.split("}") if "overflow-wrap:anywhere" in rule] == ["\ntd.long{min-width:16em;max-width:520px;overflow-wrap:anywhere"]

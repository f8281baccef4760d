import re

import numpy as np
import pytest

from explorer.highlight import (
    POOLED_LABEL,
    display_tokens,
    escape,
    highlight_tokens,
    legend_html,
    merge_word_pieces,
    score_colour,
    shared_scale,
    snippet,
    text_html,
    tokens_html,
)


def test_script_and_imdb_breaks_are_shown_as_text():
    review = 'Great film!<br /><br />Then <script>alert("x")</script> & more'
    out = text_html(review)
    assert "<script>" not in out and "<br />" not in out
    assert "&lt;br /&gt;&lt;br /&gt;" in out
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in out


def test_highlight_escapes_tokens_and_gathers_special_tokens_in_one_chip():
    tokens = ["[CLS]", "<", "script", ">", "bad", "##ly", "[SEP]", "[PAD]"]
    out = highlight_tokens(tokens, [9.0, 1.0, -2.0, 0.0, 4.0, -4.0, 9.0, 9.0])
    assert "[CLS]" not in out and "[SEP]" not in out and "[PAD]" not in out
    assert "<script" not in out
    assert ">&lt;</span>" in out and ">&gt;</span>" in out
    # "##ly" glues onto "bad" without a space, and keeps its own colour
    assert ">bad</span><span" in out
    # five text pieces and one chip holding the special tokens' 9 + 9 + 9
    assert out.count("<span") == 6 and out.count('class="ie-pooled"') == 1
    assert 'data-score="27.0"' in out and f">{POOLED_LABEL}</span>" in out


def _data_scores(out: str) -> list[float]:
    return [float(v) for v in re.findall(r'data-score="([^"]+)"', out)]


def test_token_scores_add_up_to_the_score_with_the_pooled_share_visible():
    tokens = ["[CLS]", "a", "great", "film", "[SEP]"]
    # token_influence credits the pooled layers (here 5.0) to the first token: scores[0] = own 0.5 + pooled 5.0
    scores = np.array([5.5, 0.25, 2.0, -1.0, 0.75])
    pieces = display_tokens(tokens, scores, pooled=5.0)
    assert [p.text for p in pieces] == [POOLED_LABEL, "a", "great", "film"]
    assert pieces[0].chip and pieces[0].score == pytest.approx(5.0 + 0.5 + 0.75)
    assert sum(p.score for p in pieces) == pytest.approx(scores.sum())
    assert sum(_data_scores(highlight_tokens(tokens, scores, pooled=5.0))) == pytest.approx(scores.sum())
    # relative influence: the card shows total / sqrt(I(q, q) I(m, m)); the pieces are divided by the same value
    relative = display_tokens(tokens, scores, pooled=5.0, denominator=4.0)
    assert sum(p.score for p in relative) == pytest.approx(scores.sum() / 4.0)
    assert [p.score for p in relative] == pytest.approx([p.score / 4.0 for p in pieces])
    assert all(p.score == 0 for p in display_tokens(tokens, scores, denominator=0.0))
    # a tokenizer without [CLS]: the pooled share still leaves the first word for the chip
    plain = display_tokens(["good", "film"], [3.0, 1.0], pooled=2.0)
    assert [(p.text, p.score) for p in plain] == [(POOLED_LABEL, 2.0), ("good", 1.0), ("film", 1.0)]


def test_one_colour_scale_for_every_card():
    first = display_tokens(["[CLS]", "ok", "fine"], [9.0, 0.5, -1.0], pooled=8.0)
    second = display_tokens(["[CLS]", "awful"], [0.0, -4.0])
    scale = shared_scale([first, second])
    assert scale == 4.0  # the largest |text piece| over both cards; the [pooled] chip does not set it
    out_first, out_second = tokens_html(first, scale=scale), tokens_html(second, scale=scale)
    # "fine" (-1) is a quarter of the shared scale: alpha 0.6 / 4, not the full colour of a per-card scale
    assert "rgba(178,24,43,0.150)" in out_first and "rgba(178,24,43,0.600)" in out_second
    assert "rgba(178,24,43,0.600)" in tokens_html(first)  # alone, "fine" would be the strongest colour


def test_colours_follow_sign_and_scale():
    assert score_colour(0.0, 1.0) == "transparent"
    assert score_colour(np.nan, 1.0) == "transparent"
    assert score_colour(1.0, 0.0) == "transparent"
    assert score_colour(2.0, 1.0) == "rgba(33,102,172,0.600)"  # clipped at the max alpha
    assert score_colour(-0.5, 1.0) == "rgba(178,24,43,0.300)"
    out = highlight_tokens(["good", "bad"], [1.0, -1.0], scale=4.0)
    assert "rgba(33,102,172,0.150)" in out and "rgba(178,24,43,0.150)" in out
    assert 'title="+1"' in out and 'title="-1"' in out


def test_punctuation_is_glued_like_text():
    pieces = merge_word_pieces(["i", "'", "ve", "seen", "self", "-", "important", "films", "."])
    text = "".join((" " if space else "") + t for t, space in pieces)
    assert text == "i've seen self-important films."


def test_word_piece_schemes():
    assert merge_word_pieces(["play", "##ing", "well"]) == [("play", False), ("ing", False), ("well", True)]
    assert merge_word_pieces(["▁play", "ing", "▁well"]) == [("play", False), ("ing", False), ("well", True)]
    assert merge_word_pieces(["Ġplay", "ing", "Ġwell"])[2] == ("well", True)


def test_length_mismatch_and_empty_inputs():
    with pytest.raises(ValueError):
        highlight_tokens(["a", "b"], [1.0])
    assert "ie-tokens" in highlight_tokens([], [])
    assert highlight_tokens(["[CLS]", "[SEP]"], [1.0, 2.0]).count("<span") == 1  # only the chip
    assert highlight_tokens(["[CLS]", "[SEP]"], [0.0, 0.0]).count("<span") == 0


def test_small_helpers():
    assert escape(None) == "" and escape("a<b") == "a&lt;b"
    assert snippet("a\n  b   c", 80) == "a b c"
    assert snippet("x" * 100, 10) == "x" * 9 + "…"
    assert "…" in text_html("y" * 50, max_chars=10)
    assert "helpful" in legend_html()

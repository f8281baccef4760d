import numpy as np
import pytest

from explorer.highlight import (
    escape,
    highlight_tokens,
    legend_html,
    merge_word_pieces,
    score_colour,
    snippet,
    text_html,
)


def test_script_and_imdb_breaks_are_shown_as_text():
    review = 'Great film!<br /><br />Then <script>alert("x")</script> & more'
    out = text_html(review)
    assert "<script>" not in out and "<br />" not in out
    assert "&lt;br /&gt;&lt;br /&gt;" in out
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in out


def test_highlight_escapes_tokens_and_drops_special_tokens():
    tokens = ["[CLS]", "<", "script", ">", "bad", "##ly", "[SEP]", "[PAD]"]
    out = highlight_tokens(tokens, [9.0, 1.0, -2.0, 0.0, 4.0, -4.0, 9.0, 9.0])
    assert "[CLS]" not in out and "[SEP]" not in out and "[PAD]" not in out
    assert "<script" not in out
    assert ">&lt;</span>" in out and ">&gt;</span>" in out
    # "##ly" glues onto "bad" without a space, and keeps its own colour
    assert ">bad</span><span" in out
    assert out.count("<span") == 5


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
    assert highlight_tokens(["[CLS]", "[SEP]"], [1.0, 2.0]).count("<span") == 0


def test_small_helpers():
    assert escape(None) == "" and escape("a<b") == "a&lt;b"
    assert snippet("a\n  b   c", 80) == "a b c"
    assert snippet("x" * 100, 10) == "x" * 9 + "…"
    assert "…" in text_html("y" * 50, max_chars=10)
    assert "helpful" in legend_html()

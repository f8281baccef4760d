"""Token-level HTML highlighting of review texts by per-token influence scores.

Everything that came from a user or a dataset is HTML-escaped here, so a review that contains
``<script>`` or IMDB's ``<br />`` is shown as text, never interpreted. The colours match the figures:
blue = positive = helpful (up-weighting the training review lowers the test review's loss), red =
negative = harmful. Backgrounds are translucent so the text keeps the theme's own colour and stays
readable in light and dark themes.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

HELPFUL_RGB = (33, 102, 172)  # plotly RdBu's blue end: positive influence
HARMFUL_RGB = (178, 24, 43)  # plotly RdBu's red end: negative influence
MAX_ALPHA = 0.6  # beyond this, dark text on the saturated colour gets hard to read in the light theme

SPECIAL_TOKENS = frozenset(
    {"[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", "<s>", "</s>", "<pad>", "<unk>", "<mask>", "<|endoftext|>"}
)


def escape(text: object) -> str:
    """``text`` as safe HTML: ``<``, ``>``, ``&`` and quotes escaped; ``None`` becomes an empty string."""
    return html.escape("" if text is None else str(text), quote=True)


def text_html(text: object, *, max_chars: int | None = None) -> str:
    """A review as escaped HTML in a wrapping block; newlines kept, long texts cut with an ellipsis."""
    value = "" if text is None else str(text)
    if max_chars is not None and len(value) > max_chars:
        value = value[: max(max_chars - 1, 0)].rstrip() + "…"
    return f'<div class="ie-text" style="{_BLOCK_STYLE}">{escape(value)}</div>'


def snippet(text: object, max_chars: int = 80) -> str:
    """A one-line plain-text excerpt (whitespace collapsed, cut with an ellipsis). Not escaped."""
    value = " ".join(("" if text is None else str(text)).split())
    return value if len(value) <= max_chars else value[: max(max_chars - 1, 0)].rstrip() + "…"


def score_colour(score: float, scale: float) -> str:
    """The CSS background for one token: translucent blue for positive, red for negative, none for 0."""
    if not np.isfinite(score) or scale <= 0 or score == 0:
        return "transparent"
    alpha = MAX_ALPHA * min(abs(float(score)) / scale, 1.0)
    r, g, b = HELPFUL_RGB if score > 0 else HARMFUL_RGB
    return f"rgba({r},{g},{b},{alpha:.3f})"


NO_SPACE_BEFORE = frozenset(".,!?;:)]}%'’-")
NO_SPACE_AFTER = frozenset("([{$'’-")


def merge_word_pieces(tokens: Sequence[str]) -> list[tuple[str, bool]]:
    """Display text per token and whether a space goes before it.

    Understands WordPiece (``##ing`` continues a word; ``.`` and ``'`` are separate tokens that take no space:
    ``i ' ve`` reads ``i've``), SentencePiece (``▁word`` starts one) and byte-level BPE (``Ġword`` starts one).
    Returns ``[(text, space_before)]``, one entry per input token.
    """
    out: list[tuple[str, bool]] = []
    sentencepiece = any(t.startswith("▁") for t in tokens)
    bytelevel = any(t.startswith("Ġ") for t in tokens)
    for i, token in enumerate(tokens):
        if token.startswith("##"):
            out.append((token[2:], False))
        elif sentencepiece or bytelevel:
            starts = token.startswith("▁") or token.startswith("Ġ")
            out.append((token.lstrip("▁Ġ"), starts and i > 0))
        else:
            glued = token in NO_SPACE_BEFORE or (i > 0 and tokens[i - 1] in NO_SPACE_AFTER)
            out.append((token, i > 0 and not glued))
    return out


def highlight_tokens(
    tokens: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    *,
    scale: float | None = None,
    skip_special: bool = True,
) -> str:
    """HTML for a tokenised text with each token's background showing its influence.

    Args:
        tokens: the tokenizer's tokens, ``[T]`` (as ``engine.token_influence(...).tokens``).
        scores: per-token influence, ``[T]``; positive = helpful, negative = harmful.
        scale: the absolute score that gets the strongest colour; defaults to the largest ``|score|``
            shown, so pass a shared value to compare several texts on one scale.
        skip_special: leave out ``[CLS]``, ``[SEP]``, padding and similar markers.

    Returns:
        A ``<div>`` of ``<span>`` elements, each with the escaped token text and a ``title`` tooltip
        giving the score.
    """
    values = np.asarray(scores, dtype=float).reshape(-1)
    if len(tokens) != len(values):
        raise ValueError(f"got {len(tokens)} tokens but {len(values)} scores")
    keep = [i for i, t in enumerate(tokens) if not (skip_special and t in SPECIAL_TOKENS)]
    if scale is None:
        shown = np.abs(values[keep]) if keep else np.zeros(0)
        shown = shown[np.isfinite(shown)]
        scale = float(shown.max()) if shown.size else 0.0
    pieces = merge_word_pieces([tokens[i] for i in keep])
    spans = []
    for (text, space_before), i in zip(pieces, keep, strict=True):
        colour = score_colour(values[i], scale)
        spans.append(
            (" " if space_before else "")
            + f'<span title="{values[i]:+.3g}" style="background:{colour};border-radius:3px;padding:0 1px">'
            + escape(text)
            + "</span>"
        )
    return f'<div class="ie-tokens" style="{_BLOCK_STYLE}">{"".join(spans)}</div>'


def legend_html() -> str:
    """A one-line legend for :func:`highlight_tokens` colours (static, safe HTML)."""
    helpful = score_colour(1.0, 1.0)
    harmful = score_colour(-1.0, 1.0)
    return (
        '<div class="ie-legend" style="font-size:0.85em;opacity:0.85">'
        f'<span style="background:{helpful};border-radius:3px;padding:0 4px">helpful token</span> '
        f'<span style="background:{harmful};border-radius:3px;padding:0 4px">harmful token</span> '
        "&nbsp;stronger colour = larger share of the influence; hover a token for its score."
        "</div>"
    )


_BLOCK_STYLE = "white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.7"

__all__ = [
    "escape",
    "text_html",
    "snippet",
    "score_colour",
    "merge_word_pieces",
    "highlight_tokens",
    "legend_html",
]

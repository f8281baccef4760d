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
from dataclasses import dataclass

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


POOLED_LABEL = "[pooled]"  # the chip for per-review layers (pooler, classifier) and special tokens


@dataclass(frozen=True)
class DisplayToken:
    """One piece of highlighted text: what is shown, whether a space goes before it, and its score.

    ``chip`` marks the leading ``[pooled]`` piece that carries the special tokens' and the pooled layers' share.
    """

    text: str
    space_before: bool
    score: float
    chip: bool = False


def display_tokens(
    tokens: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    *,
    pooled: float = 0.0,
    denominator: float = 1.0,
    skip_special: bool = True,
) -> list[DisplayToken]:
    """The pieces :func:`highlight_tokens` draws; their scores add up to ``sum(scores) / denominator``.

    Args:
        tokens: the tokenizer's tokens, ``[T]`` (as ``engine.token_influence(...).tokens``).
        scores: per-token influence, ``[T]``; positive = helpful. ``scores[0]`` includes ``pooled``.
        pooled: the part of the influence from layers that see one vector per review (pooler, classifier head),
            credited to the first token by ``token_influence``.
        denominator: divide every score by it (``sqrt(I(q, q) I(m, m))`` for relative influence; a value
            ``<= 0`` makes every score 0, as :meth:`ScoreTable.relative` does).
        skip_special: show ``[CLS]``, ``[SEP]`` and similar markers not as text but inside one leading
            ``[pooled]`` chip, together with ``pooled``, so no share of the score disappears. The chip is left
            out when its score is 0.
    """
    values = np.asarray(scores, dtype=float).reshape(-1).copy()
    if len(tokens) != len(values):
        raise ValueError(f"got {len(tokens)} tokens but {len(values)} scores")
    factor = 1.0 / denominator if denominator > 0 else 0.0
    values *= factor
    pooled = float(pooled) * factor
    if not skip_special:
        return [DisplayToken(t, space, float(v)) for (t, space), v in zip(merge_word_pieces(list(tokens)), values)]
    chip = 0.0
    if pooled and len(values):
        values[0] -= pooled  # the first token keeps only its own share; the pooled share goes to the chip
        chip += pooled
    keep = [i for i, t in enumerate(tokens) if t not in SPECIAL_TOKENS]
    chip += float(sum(values[i] for i, t in enumerate(tokens) if t in SPECIAL_TOKENS))
    pieces = [DisplayToken(text, space, float(values[i]))
              for (text, space), i in zip(merge_word_pieces([tokens[i] for i in keep]), keep, strict=True)]
    if chip != 0.0:
        pieces.insert(0, DisplayToken(POOLED_LABEL, False, chip, chip=True))
        if len(pieces) > 1:
            pieces[1] = DisplayToken(pieces[1].text, True, pieces[1].score)
    return pieces


def shared_scale(cards: Sequence[Sequence[DisplayToken]]) -> float:
    """One colour scale for several highlighted texts: the largest ``|score|`` of a text piece among ``cards``.

    The ``[pooled]`` chips do not set the scale (one vector per review often outweighs any word and would wash
    every word out); a chip beyond the scale shows at full colour and its tooltip gives the value.
    """
    values = [abs(piece.score) for pieces in cards for piece in pieces if not piece.chip and np.isfinite(piece.score)]
    if not values:
        values = [abs(piece.score) for pieces in cards for piece in pieces if np.isfinite(piece.score)]
    return float(max(values, default=0.0))


def highlight_tokens(
    tokens: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    *,
    scale: float | None = None,
    skip_special: bool = True,
    pooled: float = 0.0,
    denominator: float = 1.0,
) -> str:
    """HTML for a tokenised text with each token's background showing its influence.

    Args:
        tokens: the tokenizer's tokens, ``[T]`` (as ``engine.token_influence(...).tokens``).
        scores: per-token influence, ``[T]``; positive = helpful, negative = harmful.
        scale: the absolute score that gets the strongest colour; defaults to :func:`shared_scale` of this text
            alone, so pass one shared value to compare several texts on one scale.
        skip_special, pooled, denominator: see :func:`display_tokens`; the pieces' scores add up to
            ``sum(scores) / denominator``.

    Returns:
        A ``<div>`` of ``<span>`` elements, each with the escaped token text, a ``title`` tooltip giving the score
        and ``data-score`` with its full value.
    """
    pieces = display_tokens(tokens, scores, pooled=pooled, denominator=denominator, skip_special=skip_special)
    return tokens_html(pieces, scale=scale)


def tokens_html(pieces: Sequence[DisplayToken], *, scale: float | None = None) -> str:
    """HTML for pieces from :func:`display_tokens`; ``scale`` as in :func:`highlight_tokens` (pass
    :func:`shared_scale` of every text shown to put them on one colour scale)."""
    if scale is None:
        scale = shared_scale([pieces])
    spans = []
    for piece in pieces:
        colour = score_colour(piece.score, scale)
        if piece.chip:
            title = f"special tokens and the per-review layers (pooler, classifier): {piece.score:+.3g}"
            style = (f"background:{colour};border:1px solid rgba(127,127,127,0.6);border-radius:3px;padding:0 3px;"
                     "font-size:0.85em")
        else:
            title, style = f"{piece.score:+.3g}", f"background:{colour};border-radius:3px;padding:0 1px"
        spans.append(
            (" " if piece.space_before else "")
            + f'<span class="{"ie-pooled" if piece.chip else "ie-token"}" title="{escape(title)}" '
            + f'data-score="{piece.score!r}" style="{style}">'
            + escape(piece.text)
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
        "&nbsp;stronger colour = larger share of the influence, on one scale for every text shown; "
        f"{escape(POOLED_LABEL)} = the special tokens and the layers that see one vector per review. The pieces of "
        "a text add up to its score; hover one for its value."
        "</div>"
    )


_BLOCK_STYLE = "white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.7"

__all__ = [
    "escape",
    "text_html",
    "snippet",
    "score_colour",
    "merge_word_pieces",
    "DisplayToken",
    "display_tokens",
    "shared_scale",
    "highlight_tokens",
    "tokens_html",
    "legend_html",
]

"""Saving a Matplotlib figure whose labels hold characters its font lacks (CJK class names in
DejaVu Sans, Matplotlib's default): an installed font that has them is added as the texts'
fallback; where none has them, Matplotlib's multi-line warnings (one per character) become one
warning naming the labels drawn as boxes."""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


# Matplotlib's warnings for a character no font of a text has, which it draws as a box: one
# per character, and before 3.11 one more naming a script it cannot shape.
_MISSING_GLYPH = re.compile(r"Glyph (\d+) \(.*\) missing from font\(s\) (.*)\.$"
                            r"|Matplotlib currently does not support \w+ natively\.$")


def save(plt: Any, fig: Any, path: str) -> None:
    """Lays out, writes and closes `fig`. Characters its font lacks (CJK class names in
    DejaVu Sans, Matplotlib's default) come from an installed font that has them
    (`_add_fallback_font`); where none has them, Matplotlib's multi-line warnings, one per
    character, become one warning naming the labels drawn with boxes."""
    _add_fallback_font(fig)
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", _MISSING_GLYPH.pattern)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    missing, fonts = set(), set()
    for w in caught:
        match = _MISSING_GLYPH.match(str(w.message))
        if match is None:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif match[1]:
            missing.add(chr(int(match[1])))
            fonts.add(match[2])
    if missing:
        _warn_missing_glyphs(path, missing, fonts, _texts(fig))


def _texts(fig: Any) -> list[str]:
    """The figure's texts (title, axis, tick and legend labels), each once."""
    from matplotlib.text import Text

    return list(dict.fromkeys(t.get_text() for t in fig.findobj(Text) if t.get_text()))


def _add_fallback_font(fig: Any) -> None:
    """Appends an installed font that has every character the figure's texts lack in their
    own font to those texts' font families: Matplotlib's font fallback takes each glyph from
    the first family that has it, so the other characters keep their font."""
    from matplotlib import font_manager
    from matplotlib.text import Text

    lacking = {}
    for text in fig.findobj(Text):
        has = _code_points(font_manager.findfont(text.get_fontproperties()))
        if chars := {c for c in text.get_text() if c.isprintable() and ord(c) not in has}:
            lacking[text] = chars
    if not lacking or not (font := _font_with(set().union(*lacking.values()))):
        return
    for text in lacking:
        text.set_fontfamily([*text.get_fontfamily(), font])


def _font_with(chars: set[str]) -> str | None:
    """The first family (by name) with a regular face in Matplotlib's font list whose font,
    as Matplotlib picks it for that name, has all of `chars`; None when none has them. Only
    regular faces: for a family without one Matplotlib logs that it took another weight.
    Matplotlib's own Last Resort font does not count: its glyphs are the boxes."""
    from matplotlib import font_manager

    wanted = {ord(c) for c in chars}
    regular = {f.name for f in font_manager.fontManager.ttflist
               if f.style == "normal" and f.weight in (400, "normal")}
    for name in sorted(regular):
        if name.startswith("Last Resort"):
            continue
        path = font_manager.findfont(font_manager.FontProperties(family=name))
        if wanted <= _code_points(path):
            return name
    return None


@functools.lru_cache(maxsize=None)
def _code_points(path: str) -> frozenset[int]:
    """The characters the font `findfont` gave as `path` (a face of a collection, from 3.11)
    has glyphs for; none for a file removed since Matplotlib listed it."""
    from matplotlib import font_manager

    try:
        return frozenset(font_manager.get_font(path).get_charmap())
    except OSError:
        return frozenset()


def _warn_missing_glyphs(path: str, missing: set[str], fonts: set[str],
                         texts: Sequence[str]) -> None:
    """One warning for all the characters missing in the plot at `path`, naming the labels
    drawn with boxes (5, and how many more) and the fix."""
    import matplotlib

    labels = [repr(t) for t in texts if missing & set(t)]
    more = f" and {len(labels) - 5} more" if len(labels) > 5 else ""
    log.warning("%s: the plot's font (%s) lacks characters of %s%s, drawn as boxes there "
                "(results.csv and results.json keep the names); install a font that has "
                "them (CJK: Noto Sans CJK, package fonts-noto-cjk) and delete Matplotlib's "
                "font list %s/fontlist-*.json to draw them.", path, ", ".join(sorted(fonts)),
                ", ".join(labels[:5]), more, matplotlib.get_cachedir())

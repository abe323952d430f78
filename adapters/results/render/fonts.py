"""The font the rendered pages are written in: one that shows Chinese as well as Latin text.

Pages are written in the site's language (Chinese or English) and carry the
vendor's own words, so the font must cover both. radbridge looks for the
Debian fonts it knows (``fonts-wqy-microhei``, ``fonts-wqy-zenhei``: TrueType
collections that fpdf2 embeds and subsets); :func:`cjk_font` fails with
:class:`FontMissingError`, naming the package to install, when none is there.
A target that renders checks this when the configuration is loaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

from broker.model.errors import ConfigError

#: (font file, Debian package), in the order they are tried.
KNOWN_FONTS: tuple[tuple[Path, str], ...] = (
    (Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"), "fonts-wqy-microhei"),
    (Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"), "fonts-wqy-zenhei"),
)


class FontMissingError(ConfigError):
    """No font that shows Chinese is installed; rendering pages is impossible."""


@functools.cache
def cjk_font() -> Path:
    """The first known font file present, or :class:`FontMissingError` saying what to install."""
    for path, _package in KNOWN_FONTS:
        if path.is_file():
            return path
    looked = ", ".join(str(path) for path, _ in KNOWN_FONTS)
    raise FontMissingError(
        "rendered pages need a font that shows Chinese and none is installed "
        f"(looked for {looked}); install one: apt-get install {KNOWN_FONTS[0][1]}"
    )

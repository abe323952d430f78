"""Character sets of HL7 v2 messages: MSH-18 (HL7 table 0211) to Python codecs.

Only character sets that keep ASCII as it is are supported, so that the
MSH segment can be read before its MSH-18 is known: ASCII, the ISO 8859
parts, UTF-8, GB 18030 (and GBK, its subset), Big5 and KS X 1001 (EUC-KR).
UTF-16 and UTF-32 are not.
"""

from __future__ import annotations

import codecs

from broker.model.errors import Hl7Error

#: MSH-18 values (upper case, spaces, dashes and underscores removed) -> Python codec.
_TABLE_0211: dict[str, str] = {
    "ASCII": "ascii",
    "ISOIR6": "ascii",
    "USASCII": "ascii",
    "UNICODEUTF8": "utf-8",
    "UTF8": "utf-8",
    "ISOIR192": "utf-8",
    "UNICODE": "utf-8",
    "GB180302000": "gb18030",
    "GB180302005": "gb18030",
    "GB18030": "gb18030",
    "GBK": "gb18030",
    "GB2312": "gb18030",
    "BIG5": "big5",
    "KSX1001": "euc_kr",
    "ISOIR100": "latin-1",
    "ISOIR101": "iso8859-2",
    "ISOIR109": "iso8859-3",
    "ISOIR110": "iso8859-4",
    "ISOIR144": "iso8859-5",
    "ISOIR127": "iso8859-6",
    "ISOIR126": "iso8859-7",
    "ISOIR138": "iso8859-8",
    "ISOIR148": "iso8859-9",
}
for _part in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15):
    _TABLE_0211[f"8859/{_part}"] = f"iso8859-{_part}"
    _TABLE_0211[f"ISO8859/{_part}"] = f"iso8859-{_part}"
    _TABLE_0211[f"ISO8859{_part}"] = f"iso8859-{_part}"

SUPPORTED = ("ASCII", "8859/1", "8859/2 … 8859/9, 8859/15", "UNICODE UTF-8", "GB 18030-2000")


def _key(name: str) -> str:
    return name.upper().replace(" ", "").replace("-", "").replace("_", "")


def codec_for(msh18: str, default: str) -> str:
    """The Python codec for a message's MSH-18 (its first repetition), ``default`` when empty.

    Raises :class:`Hl7Error` for a character set radbridge cannot read.
    """
    name = msh18.strip()
    if not name:
        return codecs.lookup(default).name
    codec = _TABLE_0211.get(_key(name))
    if codec is None:
        raise Hl7Error(
            f"unsupported character set {name!r} in MSH-18; valid: {', '.join(SUPPORTED)} "
            "(or leave MSH-18 empty for the configured hl7.default_charset)"
        )
    return codec


def hl7_name(codec: str) -> str:
    """The MSH-18 value naming a Python codec (for messages radbridge writes)."""
    name = codecs.lookup(codec).name
    return {
        "ascii": "ASCII",
        "utf-8": "UNICODE UTF-8",
        "gb18030": "GB 18030-2000",
        "big5": "BIG-5",
        "euc_kr": "KS X 1001",
        "latin-1": "8859/1",
        "iso8859-1": "8859/1",
    }.get(name, f"8859/{name.rsplit('-', 1)[1]}" if name.startswith("iso8859-") else "")

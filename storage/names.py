"""The one policy for names people read: projects, labels, users (annotators too), and file names as shown.

A name is stored in Unicode NFC, so ``á`` typed composed or decomposed is one name, and holds no character a
reader cannot see or that rearranges the text around it: control and format characters (NUL, escapes,
zero-width spaces and joiners, direction overrides and isolates), surrogates, line and paragraph separators,
and the Hangul and Khmer fillers that render as nothing. The check is plain Python before anything reaches
the database, so SQLite and PostgreSQL (which cannot store NUL) give the same answer.

The hidden characters are listed as code point ranges rather than looked up by category, so that the API
schema's patterns (Rust regex in pydantic, Python ``re`` in the fuzzer) say exactly what this module checks;
tests/test_names.py holds the list equal to Unicode's categories Cc, Cf, Cs, Zl and Zp plus the fillers.
"""

from __future__ import annotations

import re
import unicodedata

from storage.errors import InvalidInput

HIDDEN_RANGES = (
    (0x0000, 0x001F), (0x007F, 0x009F), (0x00AD, 0x00AD), (0x034F, 0x034F), (0x0600, 0x0605), (0x061C, 0x061C),
    (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180E, 0x180E), (0x200B, 0x200F), (0x2028, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F), (0x3164, 0x3164),
    (0xD800, 0xDFFF), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD),
    (0x13430, 0x13438), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F),
)  # fmt: skip
# What str.strip() removes: a name may not start or end with it.
SPACE_RANGES = (
    (0x0009, 0x000D), (0x001C, 0x0020), (0x0085, 0x0085), (0x00A0, 0x00A0), (0x1680, 0x1680), (0x2000, 0x200A),
    (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000),
)  # fmt: skip


SURROGATES = (0xD800, 0xDFFF)


def _escape(point: int) -> str:
    return rf"\u{point:04X}" if point <= 0xFFFF else rf"\U{point:08X}"


def _class(ranges: tuple[tuple[int, int], ...]) -> str:
    return "".join(_escape(low) if low == high else f"{_escape(low)}-{_escape(high)}" for low, high in ranges)


_FIND_HIDDEN = re.compile(f"[{_class(HIDDEN_RANGES)}]")
# For API schemas; the domain functions check the same rules, for the API and the CLI alike. Rust's regex
# cannot name a surrogate, and a JSON string holding one never reaches a pattern: the schema refuses it first.
# A label or user name has no hidden character and no space at either end; a project name, whose surrounding
# spaces are removed, has a visible character.
_HIDDEN = _class(tuple(r for r in HIDDEN_RANGES if r != SURROGATES))
_SPACE = _class(SPACE_RANGES)
NAME_PATTERN = f"^[^{_HIDDEN}{_SPACE}](?:[^{_HIDDEN}]*[^{_HIDDEN}{_SPACE}])?$"
PADDED_NAME_PATTERN = f"^[^{_HIDDEN}]*[^{_HIDDEN}{_SPACE}][^{_HIDDEN}]*$"
NAME_POLICY = "Stored in Unicode NFC; no control, format or zero-width characters, line breaks or direction overrides."
REPLACEMENT = "\ufffd"
_UNNAMED = {"Cc": "a control character", "Cs": "a surrogate"}


def _describe(char: str) -> str:
    category = unicodedata.category(char)
    return f"U+{ord(char):04X} ({unicodedata.name(char, '') or _UNNAMED.get(category, category)})"


def name_problem(name: str, *, max_length: int) -> str | None:
    """Why ``name`` (already NFC) breaks the policy, said so that a person can fix it; None when it is fine."""
    if not name.strip():
        return "must have a visible character"
    hidden = _FIND_HIDDEN.search(name)
    if hidden is not None:
        return (
            f"contains the invisible or control character {_describe(hidden.group())} at position "
            f"{hidden.start() + 1}; remove it (names may not hold control, format or zero-width characters, line "
            "breaks or direction overrides)"
        )
    if name != name.strip():
        return "must not start or end with spaces"
    if len(name) > max_length:
        return f"must have at most {max_length} characters, got {len(name)}"
    return None


def clean_name(value: str, *, what: str, code: str, max_length: int) -> str:
    """``value`` in NFC, or InvalidInput with ``code`` saying what is wrong with this ``what`` and how to fix it."""
    name = nfc(value)
    problem = name_problem(name, max_length=max_length)
    if problem is not None:
        raise InvalidInput(f"{what} {value[:100]!r} {problem}", code=code, details={"name": value[:100]})
    return name


def display_name(value: str, *, max_length: int) -> str:
    """A name that comes with data, such as an uploaded file's, made safe to show instead of refused: NFC, each
    hidden character replaced by U+FFFD, cut to ``max_length``."""
    return _FIND_HIDDEN.sub(REPLACEMENT, nfc(value))[:max_length]


def nfc(value: str) -> str:
    """The form names are stored in, for looking one up as typed."""
    return unicodedata.normalize("NFC", value)

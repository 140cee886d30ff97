"""The code file of `loyalty rewards import-codes`: one code per line, validated whole.

Pure parsing, so a malformed file is refused before anything is loaded. Rules:
- UTF-8; `\n` or `\r\n` line ends; a final line end is optional.
- An optional first line `code` (a CSV header) is skipped.
- Each other line is one code: 1 to CODE_LENGTH_MAX_CHARS printable characters with no
  whitespace, comma, quote or semicolon (those mean a file with several columns, or a typo).
- An empty line in the middle of the file is malformed (a code went missing, or the file was
  cut); trailing empty lines at the end are tolerated.
- At most CODES_PER_FILE_MAX codes.
"""

from __future__ import annotations

from dataclasses import dataclass

CODE_LENGTH_MAX_CHARS = 128
CODES_PER_FILE_MAX = 2_000_000
HEADER = "code"
_FORBIDDEN = frozenset(',;"\'')


class MalformedFile(ValueError):
    """The file cannot be loaded; `line` is 1-based (0: the file as a whole)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class CodeFile:
    codes: list[str]  # in file order, duplicates included
    lines: int


def parse_codes(raw: bytes) -> CodeFile:
    """Every code of the file, or MalformedFile naming the first bad line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise MalformedFile(line, "not UTF-8") from None
    if text.startswith("\ufeff"):  # a BOM written by spreadsheet exports
        text = text[1:]
    lines = text.split("\n")
    while lines and lines[-1].strip("\r") == "":
        lines.pop()
    if not lines:
        raise MalformedFile(0, "the file has no codes")
    codes: list[str] = []
    for number, line in enumerate(lines, start=1):
        code = line[:-1] if line.endswith("\r") else line
        if number == 1 and code.strip().lower() == HEADER:
            continue
        problem = _problem(code)
        if problem:
            raise MalformedFile(number, problem)
        codes.append(code)
        if len(codes) > CODES_PER_FILE_MAX:
            raise MalformedFile(number, f"more than {CODES_PER_FILE_MAX} codes in one file")
    if not codes:
        raise MalformedFile(0, "the file has no codes")
    return CodeFile(codes, len(lines))


def _problem(code: str) -> str | None:
    if not code:
        return "empty line (a missing code?)"
    if len(code) > CODE_LENGTH_MAX_CHARS:
        return f"longer than {CODE_LENGTH_MAX_CHARS} characters"
    for char in code:
        if char.isspace():
            return "whitespace inside a code"
        if not char.isprintable():
            return "a control character"
        if char in _FORBIDDEN:
            return f"{char!r} is not allowed in a code (one code per line, no columns)"
    return None

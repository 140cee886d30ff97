"""The code file of import-codes: what loads, and the line a malformed file is refused at."""

from __future__ import annotations

import pytest

from rewards.domain.codefile import CODE_LENGTH_MAX_CHARS, MalformedFile, parse_codes


def test_one_code_per_line_with_an_optional_header_and_crlf() -> None:
    assert parse_codes(b"code\r\nAAA-1\r\nBBB-2\r\n").codes == ["AAA-1", "BBB-2"]
    assert parse_codes(b"\xef\xbb\xbfAAA\nAAA\nBBB").codes == ["AAA", "AAA", "BBB"]
    assert parse_codes(b"AAA\n\n\n").codes == ["AAA"]


@pytest.mark.parametrize(("raw", "line"), [
    (b"AAA\nBBB\n\nCCC\n", 3),
    (b"AAA\nB B\n", 2),
    (b"AAA,1\n", 1),
    (b"code\nAAA\n\"BBB\"\n", 3),
    (b"AAA\nBB\x00B\n", 2),
    (b"AAA\nBBB\n\xff\xfe\n", 3),
    (b"A\n" + b"B" * (CODE_LENGTH_MAX_CHARS + 1) + b"\n", 2),
])
def test_a_malformed_line_is_named(raw: bytes, line: int) -> None:
    with pytest.raises(MalformedFile) as error:
        parse_codes(raw)
    assert error.value.line == line
    assert f"line {line}:" in str(error.value)


@pytest.mark.parametrize("raw", [b"", b"\n\n", b"code\n"])
def test_a_file_without_codes_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedFile):
        parse_codes(raw)


def test_the_error_never_repeats_the_code() -> None:
    with pytest.raises(MalformedFile) as error:
        parse_codes(b"SECRET-1\nSECRET 2\n")
    assert "SECRET" not in str(error.value)

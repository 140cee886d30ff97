"""expiry-scheduler's routes (CONTRACT.md, port 8083). Auth and error bodies: loyalty.http.

- `GET /v1/programs/{program_id}/expirations?from=&to=&format=&limit=&cursor=`: upcoming
  expirations of all members, `{member_id, points, expires_at, policy}` per member, instant
  and rule; JSON pages (`items`, `next_cursor`), or the whole range as CSV with a header row
  (`?format=csv` or `Accept: text/csv`), streamed from a server-side cursor.
- `GET /v1/programs/{program_id}/members/{ref}/expirations`: the same for one member, with
  the policy that applies.
- `GET /v1/programs/{program_id}/liability[?format=csv]`: points outstanding by expiry month
  in the program's own time zone (the ledger's months are UTC).

`from`/`to`: RFC 3339 with an offset, or a date (the start of that day in the program's time
zone); `from` defaults to now, `to` to no end; `from` is included, `to` is not.

Result codes, in the order they are checked: 400 `invalid_parameter` (any query parameter
that is not printable UTF-8, a malformed program id, `from`, `to`, `format` or `limit`),
400 `invalid_phone` / `invalid_email` / `invalid_identifier` (a `{ref}` that cannot be
anyone's), 404 `program_not_found`, 404 `member_not_found`, 400 `invalid_cursor`.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from aiohttp import web

from expiry.adapters.queries import ExpiryReads
from expiry.domain.schedule import Program, policy_summary
from loyalty.clock import Clock
from loyalty.http import HttpError, json_response, query_int
from loyalty.identifiers import InvalidIdentifier, parse_ref

PAGE_SIZE_DEFAULT = 1_000
PAGE_SIZE_MAX = 10_000
REF_LENGTH_MAX_CHARS = 400
PARAM_LENGTH_MAX_CHARS = 64
CURSOR_LENGTH_MAX_CHARS = 1_000
CSV_HEADER = ("member_id", "points", "expires_at", "policy")
_PROGRAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def add_routes(app: web.Application, reads: ExpiryReads, clock: Clock) -> None:
    async def program_of(request: web.Request) -> tuple[Program, dict]:
        _check_query(request)
        program_id = request.match_info["program_id"]
        if not _PROGRAM_ID.match(program_id):
            raise HttpError(400, "invalid_parameter",
                            "program_id must be 1 to 64 letters, digits, '_', '.' or '-'")
        found = await reads.program(program_id)
        if found is None:
            raise HttpError(404, "program_not_found", f"no program {program_id}")
        return found

    async def member_of(request: web.Request, program: Program) -> str:
        ref = request.match_info["ref"]
        if len(ref) > REF_LENGTH_MAX_CHARS or not ref.isprintable():
            raise HttpError(400, "invalid_identifier",
                            f"a member reference is 1 to {REF_LENGTH_MAX_CHARS} printable "
                            "characters")
        try:
            parsed = parse_ref(ref)
        except InvalidIdentifier as exc:
            raise HttpError(400, exc.code, exc.message) from None
        member_id = (ref if parsed is None
                     else await reads.resolve(program.program_id, *parsed))
        if member_id is None or not await reads.member_known(program.program_id, member_id):
            raise HttpError(404, "member_not_found",
                            f"no member {ref} in program {program.program_id}")
        return member_id

    async def expirations(request: web.Request, member_id: str | None, program: Program,
                          extra: dict) -> web.StreamResponse:
        start = _instant(request, "from", program) or clock.now()
        end = _instant(request, "to", program)
        if end is not None and end <= start:
            raise HttpError(400, "invalid_parameter", "to must be after from")
        if _wants_csv(request):
            name = f"expirations-{program.program_id}" + (f"-{member_id}" if member_id else "")
            return await _stream_csv(request, name, CSV_HEADER, _csv_rows(
                reads.expirations_stream(program.program_id, start, end, member_id)))
        limit = query_int(request, "limit", PAGE_SIZE_DEFAULT, 1, PAGE_SIZE_MAX)
        after = _cursor(request.query.get("cursor"))
        rows = await reads.expirations_page(program.program_id, start, end, member_id, after,
                                            limit)
        items = [{"member_id": r["member_id"], "points": r["points"],
                  "expires_at": r["expires_at"].isoformat(), "policy": r["policy"]}
                 for r in rows]
        last = rows[-1] if len(rows) == limit else None
        return json_response({
            "program_id": program.program_id, **extra, "from": start.isoformat(),
            "to": end.isoformat() if end else None, "items": items,
            "next_cursor": _encode_cursor(last) if last else None})

    async def program_expirations(request: web.Request) -> web.StreamResponse:
        program, _ = await program_of(request)
        return await expirations(request, None, program, {})

    async def member_expirations(request: web.Request) -> web.StreamResponse:
        program, definition = await program_of(request)
        member_id = await member_of(request, program)
        return await expirations(request, member_id, program, {
            "member_id": member_id,
            "policy": policy_summary(program, definition.get("expiry") or {})})

    async def liability(request: web.Request) -> web.StreamResponse:
        program, _ = await program_of(request)
        report = await reads.liability(program)
        if _wants_csv(request):
            async def rows():
                yield [(m["month"], m["points"]) for m in report["by_expiry_month"]] + [
                    ("never", report["never_expiring"])]
            return await _stream_csv(request, f"liability-{program.program_id}",
                                     ("month", "points"), rows())
        return json_response(report)

    app.router.add_get("/v1/programs/{program_id}/expirations", program_expirations)
    app.router.add_get("/v1/programs/{program_id}/members/{ref}/expirations",
                       member_expirations)
    app.router.add_get("/v1/programs/{program_id}/liability", liability)


def _check_query(request: web.Request) -> None:
    """Any parameter with NUL, control characters or bytes that are not UTF-8 is refused,
    used by the route or not: it is a broken client, and it must not reach the database."""
    for key, value in request.query.items():
        if len(key) > PARAM_LENGTH_MAX_CHARS or not (key.isprintable() and value.isprintable()):
            raise HttpError(400, "invalid_parameter",
                            "query parameters must be printable UTF-8 text")


def _wants_csv(request: web.Request) -> bool:
    fmt = request.query.get("format")
    if fmt is not None and fmt not in ("json", "csv"):
        raise HttpError(400, "invalid_parameter", "format must be json or csv")
    return fmt == "csv" or (fmt is None and "text/csv" in request.headers.get("Accept", ""))


def _instant(request: web.Request, name: str, program: Program) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    problem = HttpError(400, "invalid_parameter",
                        f"{name} must be an RFC 3339 instant with an offset or a date "
                        "(YYYY-MM-DD)")
    if len(raw) > PARAM_LENGTH_MAX_CHARS or not raw.isprintable():
        raise problem
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            return datetime.combine(day, time(0), tzinfo=ZoneInfo(program.time_zone))
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise problem from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise problem
    return value


def _encode_cursor(row) -> str:
    raw = json.dumps([row["expires_at"].isoformat(), row["member_id"], row["policy"]])
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _cursor(raw: str | None) -> tuple[datetime, str, str] | None:
    if raw is None:
        return None
    try:
        if len(raw) > CURSOR_LENGTH_MAX_CHARS:
            raise ValueError("too long")
        at, member_id, policy = json.loads(base64.urlsafe_b64decode(raw.encode()))
        instant = datetime.fromisoformat(at)
        if instant.tzinfo is None or not all(
                isinstance(s, str) and s.isprintable() for s in (member_id, policy)):
            raise ValueError("malformed")
    except (ValueError, TypeError, UnicodeError):
        raise HttpError(400, "invalid_cursor", "not a cursor this route issued") from None
    return instant, member_id, policy


async def _csv_rows(batches):
    async for rows in batches:
        yield [(r["member_id"], r["points"], r["expires_at"].isoformat(), r["policy"])
               for r in rows]


async def _stream_csv(request: web.Request, name: str, header: tuple[str, ...],
                      batches) -> web.StreamResponse:
    """Header first (the first byte goes out before the query runs), then a chunk per batch:
    memory stays flat whatever the number of rows."""
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="{name}.csv"'})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(_csv_line([header]))
    async for rows in batches:
        await response.write(_csv_line(rows))
    await response.write_eof()
    return response


def _csv_line(rows) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()

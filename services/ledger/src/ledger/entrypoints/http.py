"""The ledger's read routes (CONTRACT.md, ledger 8082). Auth and error bodies: loyalty.http.

Result codes, in the order they are checked:
- 400 `invalid_parameter`: `limit` not an integer in 1..200;
- 400 `invalid_phone` / `invalid_email` / `invalid_identifier`: a `{ref}` identifier that
  cannot be anyone's (the caller's typo, not an unknown member);
- 404 `member_not_found`: no such member in the program; 404 `program_not_found`: a program
  with no accounts at all (never earned anything, or not a program);
- 400 `invalid_cursor`: a cursor not issued for this member's transactions.
"""

from __future__ import annotations

from aiohttp import web

from ledger.adapters.queries import (
    TRANSACTIONS_PAGE_SIZE_DEFAULT,
    TRANSACTIONS_PAGE_SIZE_MAX,
    BadCursor,
    LedgerReads,
)
from loyalty.http import HttpError, json_response, query_int
from loyalty.identifiers import InvalidIdentifier, parse_ref


def add_routes(app: web.Application, queries: LedgerReads) -> None:
    async def resolve(request: web.Request) -> tuple[str, str]:
        """(program_id, member_id) of the `{ref}`; 404 if the identifier is unknown."""
        program_id = request.match_info["program_id"]
        ref = request.match_info["ref"]
        try:
            parsed = parse_ref(ref)
        except InvalidIdentifier as exc:
            raise HttpError(400, exc.code, exc.message) from None
        if parsed is None:
            return program_id, ref
        member_id = await queries.resolve(program_id, *parsed)
        if member_id is None:
            raise _member_not_found(request)
        return program_id, member_id

    async def member(request: web.Request) -> web.Response:
        program_id, member_id = await resolve(request)
        view = await queries.member(program_id, member_id)
        if view is None:
            raise _member_not_found(request)
        return json_response(view)

    async def transactions(request: web.Request) -> web.Response:
        limit = query_int(request, "limit", TRANSACTIONS_PAGE_SIZE_DEFAULT, 1,
                          TRANSACTIONS_PAGE_SIZE_MAX)
        program_id, member_id = await resolve(request)
        try:
            page = await queries.transactions(program_id, member_id, limit,
                                              request.query.get("cursor"))
        except BadCursor as exc:
            raise HttpError(400, "invalid_cursor", str(exc)) from None
        if page is None:
            raise _member_not_found(request)
        return json_response(page)

    async def liability(request: web.Request) -> web.Response:
        program_id = request.match_info["program_id"]
        report = await queries.liability(program_id)
        if report is None:
            raise HttpError(404, "program_not_found", f"no accounts in program {program_id}")
        return json_response(report)

    app.router.add_get("/v1/programs/{program_id}/members/{ref}", member)
    app.router.add_get("/v1/programs/{program_id}/members/{ref}/transactions", transactions)
    app.router.add_get("/v1/programs/{program_id}/liability", liability)


def _member_not_found(request: web.Request) -> HttpError:
    return HttpError(404, "member_not_found",
                     f"no member {request.match_info['ref']} in program "
                     f"{request.match_info['program_id']}")

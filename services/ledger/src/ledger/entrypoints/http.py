"""The ledger's read routes (CONTRACT.md, ledger 8082)."""

from __future__ import annotations

from aiohttp import web

from ledger.adapters.postgres import LedgerQueries
from loyalty.http import HttpError, json_response
from loyalty.identifiers import parse_ref


def add_routes(app: web.Application, queries: LedgerQueries) -> None:
    async def resolve(request: web.Request) -> tuple[str, str]:
        program_id = request.match_info["program_id"]
        ref = request.match_info["ref"]
        parsed = parse_ref(ref)
        if parsed is None:
            return program_id, ref
        member_id = await queries.resolve(program_id, *parsed)
        if member_id is None:
            raise HttpError(404, "member_not_found", f"no member {ref} in program {program_id}")
        return program_id, member_id

    async def member(request: web.Request) -> web.Response:
        program_id, member_id = await resolve(request)
        view = await queries.member(program_id, member_id)
        if view is None:
            raise HttpError(404, "member_not_found",
                            f"no member {request.match_info['ref']} in program {program_id}")
        return json_response(view)

    app.router.add_get("/v1/programs/{program_id}/members/{ref}", member)

"""earn's routes (CONTRACT.md, earn 8081)."""

from __future__ import annotations

from aiohttp import web

from earn.adapters.postgres import EarnQueries
from loyalty.clock import Clock
from loyalty.http import HttpError, json_response


def add_routes(app: web.Application, queries: EarnQueries, clock: Clock) -> None:
    async def program(request: web.Request) -> web.Response:
        program_id = request.match_info["program_id"]
        found = await queries.program(program_id)
        if found is None:
            raise HttpError(404, "program_not_found", f"program {program_id!r} is not applied")
        version, definition = found
        now = clock.now()
        if not definition.is_enrolment_open(now) and not definition.is_earning_open(now):
            status = "closed"
        elif not definition.is_earning_open(now):
            status = "earning_closed"
        elif not definition.is_enrolment_open(now):
            status = "enrolment_closed"
        else:
            status = "active"
        return json_response({"program_id": program_id, "version": version, "status": status})

    async def outcome(request: web.Request) -> web.Response:
        program_id, event_id = request.match_info["program_id"], request.match_info["event_id"]
        found = await queries.outcome(program_id, event_id)
        if found is None:
            raise HttpError(404, "event_not_found",
                            f"earn has not processed event {event_id!r} of {program_id!r} "
                            "(not yet, or it was dead-lettered)")
        return json_response(found)

    app.router.add_get("/v1/programs/{program_id}", program)
    # An addition to CONTRACT.md: what earn did with an input event and why (support staff).
    app.router.add_get("/v1/programs/{program_id}/events/{event_id}", outcome)

"""reward-fulfilment's routes (CONTRACT.md, reward-fulfilment 8084).

Result codes, in the order they are checked:
- 400 `invalid_parameter`: a path segment longer than PATH_SEGMENT_LENGTH_MAX_CHARS or with a
  control character (a NUL byte from `%00`, say): no id of ours looks like that;
- 404 `program_not_found`: the program was never applied;
- 404 `order_not_found`: no such order (not yet processed, or never requested).

A code is never in a response: the order route reads no code column at all.
"""

from __future__ import annotations

from aiohttp import web

from loyalty.contracts import ID_LEN_MAX
from loyalty.http import HttpError, json_response
from rewards.adapters.postgres import RewardsReads

PATH_SEGMENT_LENGTH_MAX_CHARS = ID_LEN_MAX


def segment(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if len(value) > PATH_SEGMENT_LENGTH_MAX_CHARS:
        raise HttpError(400, "invalid_parameter",
                        f"{name} is longer than {PATH_SEGMENT_LENGTH_MAX_CHARS} characters")
    if not value or any(not c.isprintable() for c in value) or "\x00" in value:
        raise HttpError(400, "invalid_parameter", f"{name} has a control character")
    return value


def add_routes(app: web.Application, reads: RewardsReads) -> None:
    async def catalog(request: web.Request) -> web.Response:
        program_id = segment(request, "program_id")
        items = await reads.catalog(program_id)
        if items is None:
            raise HttpError(404, "program_not_found", f"program {program_id!r} is not applied")
        return json_response({"items": items})

    async def order(request: web.Request) -> web.Response:
        order_id = segment(request, "order_id")
        found = await reads.order(order_id)
        if found is None:
            raise HttpError(404, "order_not_found", f"no order {order_id!r} (not processed "
                            "yet, or never requested)")
        return json_response(found)

    app.router.add_get("/v1/programs/{program_id}/rewards", catalog)
    app.router.add_get("/v1/orders/{order_id}", order)

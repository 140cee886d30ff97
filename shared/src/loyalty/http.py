"""The HTTP edge every service shares: health, readiness, metrics, bearer auth, error bodies.

Errors are always `{"error": {"code", "message"}}` with a fitting status. `/healthz`,
`/readyz` and `/metrics` need no token; everything under `/v1` needs
`Authorization: Bearer $LOYALTY_API_TOKEN`.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from loyalty import metrics

log = structlog.get_logger(__name__)

URL_LEN_MAX = 4096
# aiohttp's own limit on a request line: above ours, so a long target gets our error body.
REQUEST_LINE_BYTES_MAX = 1024 * 1024
# NUL and lone surrogates; U+FFFD stands for bytes that were not UTF-8 once decoded.
_UNUSABLE = re.compile("[\x00\ud800-\udfff\ufffd]")

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""Returns None when ready, else why not."""


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def make_app(api_token: str, readiness: ReadinessCheck) -> web.Application:
    @web.middleware
    async def errors_and_auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/v1/") and not _authorised(request, api_token):
            return error_response(401, "unauthorized", "missing or wrong bearer token")
        if problem := malformed_request(request):
            return error_response(*problem)
        try:
            return await handler(request)
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except web.HTTPException as exc:
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
            return error_response(exc.status, code, exc.reason)
        except Exception:
            log.exception("http.unhandled", path=request.path)
            return error_response(500, "internal", "internal error; see the service log")

    async def healthz(_: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        problem = await readiness()
        if problem:
            return error_response(503, "not_ready", problem)
        return json_response({"status": "ready"})

    async def metrics_route(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app = web.Application(middlewares=[errors_and_auth])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_route)
    return app


def malformed_request(request: web.Request) -> tuple[int, str, str] | None:
    """Refuse, for every route at once, what no route can use: an overlong target, and path
    segments or parameters holding NUL, lone surrogates or bytes that are not UTF-8 (Postgres
    cannot take them; a route would fail with a 500)."""
    if len(request.raw_path) > URL_LEN_MAX:
        return 414, "uri_too_long", f"the request target is longer than {URL_LEN_MAX} bytes"
    texts = [*request.match_info.values(), *request.query.keys(), *request.query.values()]
    for text in texts:
        if _UNUSABLE.search(text):
            return (400, "invalid_parameter",
                    "a path segment or parameter holds a NUL, a lone surrogate or bytes "
                    "that are not UTF-8")
    return None


def _authorised(request: web.Request, api_token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or not api_token:
        return False
    return hmac.compare_digest(token.strip().encode(), api_token.encode())


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, "invalid_parameter", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise HttpError(400, "invalid_parameter", f"{name} must be between {low} and {high}")
    return value

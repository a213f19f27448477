"""REST error answers, alike on both tiers: `{message, code}` with the status of the error.

Handlers raise `AgenstraError` (or tornado's `HTTPError`, e.g. from Jupyter's auth
decorators); this mixin turns either into the JSON body clients read.
"""

from __future__ import annotations

import json
from typing import Any

from tornado import web
from tornado.log import app_log as log

from . import protocol
from .protocol import AgenstraError, ErrorCode

_CODE_OF_STATUS = {404: ErrorCode.NOT_FOUND, 409: ErrorCode.CONFLICT,
                   413: ErrorCode.PAYLOAD_TOO_LARGE, 429: ErrorCode.RATE_LIMITED}


def error_of(status: int, exc: BaseException | None, reason: str) -> AgenstraError:
    """The error a failed request answers with; every auth failure gets one message."""
    if isinstance(exc, AgenstraError):
        status = exc.status  # tornado says 500 for anything that is not its HTTPError
        if status not in (401, 403):
            return exc
    if status in (401, 403):
        return AgenstraError(ErrorCode.UNAUTHORIZED, protocol.UNAUTHORIZED_MESSAGE, status)
    if status >= 500:
        return AgenstraError(ErrorCode.INTERNAL, "Internal error", status)
    message = getattr(exc, "log_message", None) or reason
    return AgenstraError(_CODE_OF_STATUS.get(status, ErrorCode.INVALID_PAYLOAD), message, status)


class JSONErrors:
    """Mixin for a tornado RequestHandler (listed before it): JSON error bodies."""

    def write_error(self: Any, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        error = error_of(status_code, exc, self._reason)
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error.payload()))

    def log_exception(self: Any, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, web.HTTPError):
            return  # a refused request, not a fault: the access log has its status
        if isinstance(value, AgenstraError) and value.code != ErrorCode.INTERNAL:
            if value.status >= 500:  # e.g. a manager down: expected, one line, no traceback
                log.warning("%s %s: %s %s", self.request.method, self.request.path,
                            value.code, value.message)
            return
        super().log_exception(typ, value, tb)  # type: ignore[misc]

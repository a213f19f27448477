"""Mount python-socketio inside Jupyter server, behind Jupyter's own authentication.

Every engine.io request (websocket upgrade or long-polling) goes through JupyterHandler:
token, cookie, XSRF and origin are checked exactly as for Jupyter's own APIs.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from tornado import web

from ..socketio_tuned import TunedServer, socketio_handler


def jupyter_socketio_handler(sio: TunedServer) -> type:
    engineio_handler: Any = socketio_handler(sio)

    class SocketIOHandler(engineio_handler, JupyterHandler):  # type: ignore[misc, valid-type]
        auth_resource = "agenstra"

        @ws_authenticated
        async def get(self, *args: Any, **kwargs: Any) -> None:
            await super().get(*args, **kwargs)

        @web.authenticated
        async def post(self, *args: Any, **kwargs: Any) -> None:
            await super().post(*args, **kwargs)

        @web.authenticated
        async def options(self, *args: Any, **kwargs: Any) -> None:
            await super().options(*args, **kwargs)

        def check_origin(self, origin: str | None = None) -> bool:
            return JupyterHandler.check_origin(self, origin or "")

    return SocketIOHandler

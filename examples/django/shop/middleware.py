"""Turn bus failures that escape a view into JSON HTTP errors."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from bus_core import RemoteError, RpcTimeout, TransportError

logger = logging.getLogger("shop.bus")


class BusErrorMiddleware:
    """RemoteError -> 502, RpcTimeout -> 504, TransportError -> 503; anything else is left
    to Django (a 500). Views catch the remote errors they expect first (e.g. 404, 409)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception
                          ) -> HttpResponse | None:
        if isinstance(exception, RemoteError):
            # The remote traceback goes to the log, not to the HTTP client.
            logger.error("%s %s: %s.%s() raised %s: %s\n%s", request.method, request.path,
                         exception.api_name, exception.procedure_name, exception.remote_type,
                         exception.remote_message, exception.remote_traceback.rstrip())
            return JsonResponse({
                "error": "remote_error",
                "message": f"{exception.api_name}.{exception.procedure_name}() failed: "
                           f"{exception.remote_type}: {exception.remote_message}",
            }, status=502)
        if isinstance(exception, RpcTimeout):
            logger.error("%s %s: %s", request.method, request.path, exception)
            return JsonResponse({"error": "timeout", "message": str(exception)}, status=504)
        if isinstance(exception, TransportError):
            # The message names the Redis host: logged, not sent.
            logger.error("%s %s: %s", request.method, request.path, exception)
            return JsonResponse({"error": "bus_unavailable",
                                 "message": "the bus is unavailable; try again later"},
                                status=503)
        return None

"""Sync views calling the accounts service: plain blocking calls, fine under gthread."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from bus_core import RemoteError
from shop.bus import get_bus


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Liveness only: answers without touching the bus."""
    return JsonResponse({"ok": True})


@require_POST
def signup(request: HttpRequest) -> JsonResponse:
    """POST username, email -> 201 with the new user and the id of the fired event.

    A taken username is 409; other failures of the service (a malformed email, a bug) reach
    BusErrorMiddleware: 502, or 504 when no worker answers in time."""
    username = request.POST.get("username", "").strip()
    email = request.POST.get("email", "").strip()
    if not username or not email:
        return JsonResponse({"error": "bad_request",
                             "message": "username and email are required"}, status=400)
    bus = get_bus()
    try:
        user = bus.accounts.create_user(username=username, email=email)
    except RemoteError as exc:
        if exc.remote_type != "UsernameTaken":
            raise
        return JsonResponse({"error": "conflict", "message": exc.remote_message}, status=409)
    event = bus.accounts.user_signed_up.fire(user_id=user["id"], username=user["username"],
                                            email=user["email"])
    return JsonResponse({"user": user, "event_id": event.id}, status=201)


@require_GET
def user_detail(request: HttpRequest, username: str) -> JsonResponse:
    """GET -> the user as JSON, or 404."""
    try:
        user = get_bus().accounts.get_user(username=username)
    except RemoteError as exc:
        if exc.remote_type != "UnknownUser":
            raise
        return JsonResponse({"error": "not_found", "message": exc.remote_message}, status=404)
    return JsonResponse({"user": user})

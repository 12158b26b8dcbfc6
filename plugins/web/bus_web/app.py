"""The console's ASGI app (Starlette): server-rendered pages, a small script, JSON endpoints.

Pages: `/` (APIs), `/apis/{api}` (RPCs and events with their forms), `/workers`, `/history`,
`/groups`, `/dead-letters`, `/config`. JSON: `/api/workers`, `/api/dead-letters`; writes:
`POST /api/call/{api}/{rpc}`, `/api/fire/{api}/{event}`, `/api/dead-letters/replay`,
`/api/dead-letters/purge` (refused unless writes are allowed), and `/api/config/check`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bus_core import dead_letters as engine
from bus_core.cli_dead_letters import moment
from bus_core.cli_messages import UsageError, split_target
from bus_core.client import Bus
from bus_core.dead_letters import Selection
from bus_core.errors import BusError, RemoteError, RpcTimeout, TransportError
from bus_core.messages import valid_api_name, valid_member_name
from bus_core.redaction import redact_text
from bus_web import data
from bus_web.forms import fields_for, validation_errors
from bus_web.security import COOKIE, SESSION_SECONDS, Settings, csrf_matches

logger = logging.getLogger("bus.web")
HERE = Path(__file__).parent
MAX_BODY = 1024 * 1024
MAX_LOGIN_BODY = 16 * 1024  # a token and little else
SCHEMA_SECONDS = 2.0  # how long the APIs' schemas are reused
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a ?token= URL never leaves in a Referer
    "Cache-Control": "no-store",
}
PUBLIC = ("/login", "/static/")

Handler = Callable[[Request], Awaitable[Response]]


class Problem(Exception):
    """A request the console refuses: an HTTP status and a message for the user."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def _clean(text: str) -> str:
    """Any text from an exception, with URL passwords hidden."""
    return redact_text(str(text))


class Console:
    """One console: a bus client, its settings, the pages and endpoints."""

    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings
        self._apis: tuple[float, dict[str, data.ApiInfo]] | None = None
        self.schema_problem = ""  # why the shared schema could not be read last time
        self.templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                                     autoescape=select_autoescape(["html"]))
        self.templates.filters["tojson_pretty"] = lambda v: json.dumps(
            v, indent=2, default=str, ensure_ascii=False)

    # -- plumbing -------------------------------------------------------------------------

    async def known(self) -> dict[str, data.ApiInfo]:
        """The APIs on the bus, loaded at most every SCHEMA_SECONDS (a call or a page view
        does not read every schema again)."""
        now = time.monotonic()
        if self._apis is None or now - self._apis[0] > SCHEMA_SECONDS:
            found, self.schema_problem = await data.apis(self.bus)
            self._apis = (now, found)
        return self._apis[1]

    def user(self, request: Request) -> tuple[str | None, Any]:
        """(user, session or None): by session cookie or by bearer token."""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return self.settings.user_for_token(header[7:].strip()), None
        session = self.settings.session(request.cookies.get(COOKIE))
        return (session.user, session) if session else (None, None)

    def page(self, request: Request, name: str, status: int = 200, **context: Any
             ) -> HTMLResponse:
        session = request.state.session
        html = self.templates.get_template(name).render(
            request=request, user=request.state.user, allow_writes=self.settings.allow_writes,
            csrf=session.csrf if session else "", path=request.url.path, **context)
        return HTMLResponse(html, status)

    def guard(self, handler: Handler, *, write: bool = False, post: bool = False) -> Handler:
        """Wrap an endpoint: a user is required; a POST made with a session must carry its
        CSRF token; a write needs writes allowed. Problems become JSON or a page."""
        async def guarded(request: Request) -> Response:
            user, session = self.user(request)
            api = request.url.path.startswith("/api/")
            if user is None:
                if api or request.method != "GET":
                    return JSONResponse({"error": "log in first (a token is needed)"}, 401)
                return RedirectResponse(f"/login?next={quote(request.url.path)}", 303)
            request.state.user, request.state.session = user, session
            try:
                if post:
                    await self._check_post(request, session, write)
                return await handler(request)
            except HTTPException as exc:  # Starlette refusing a form (a part too large)
                return JSONResponse({"error": str(exc.detail)}, exc.status_code)
            except Problem as problem:
                if api or request.method != "GET":
                    return JSONResponse({"error": problem.message, **problem.extra},
                                        problem.status)
                return self.page(request, "error.html", problem.status,
                                 message=problem.message)
        return guarded

    async def _check_post(self, request: Request, session: Any, write: bool) -> None:
        length = request.headers.get("content-length")  # first: before a form is read
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            raise Problem(413, f"the request is larger than {MAX_BODY} bytes")
        if session is not None:  # a cookie came with it: the page's token must too
            given = request.headers.get("x-csrf-token")
            if given is None and request.headers.get("content-type", "").startswith(
                    ("application/x-www-form-urlencoded", "multipart/form-data")):
                given = (await request.form()).get("csrf_token")
            if not csrf_matches(session, given if isinstance(given, str) else None):
                raise Problem(403, "the CSRF token is missing or wrong: reload the page")
        if write and not self.settings.allow_writes:
            raise Problem(403, "the console is read-only: start it with `bus web "
                               "--allow-writes` (or plugins.web.allow_writes) to call, fire, "
                               "replay or purge")

    async def json_body(self, request: Request) -> dict[str, Any]:
        body = await request.body()
        if len(body) > MAX_BODY:
            raise Problem(413, f"the request is larger than {MAX_BODY} bytes")
        try:
            value = json.loads(body or b"{}")
        except ValueError as exc:
            raise Problem(400, f"the request body is not JSON: {exc}") from None
        except RecursionError:
            raise Problem(400, "the request body is nested too deeply") from None
        if not isinstance(value, dict):
            raise Problem(400, "the request body must be a JSON object")
        return value

    def who(self, request: Request) -> str:
        client = request.client.host if request.client else "?"
        return f"{request.state.user} (bus web, from {client})"

    async def api_info(self, api_name: str) -> data.ApiInfo:
        found = (await self.known()).get(api_name)
        if found is None:
            raise Problem(404, f"no API {api_name!r} on the bus (neither registered here nor "
                               "in the shared schema)" + (f"; {self.schema_problem}"
                                                          if self.schema_problem else ""))
        return found

    # -- login ----------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        next_path = request.query_params.get("next", "/")
        if not re.fullmatch(r"/(?![/\\])[^\s]*", next_path):  # a path here, never a host
            next_path = "/"
        error = ""
        if request.method == "POST":  # anyone may post here: a small form, no upload
            if not request.headers.get("content-type", "").startswith(
                    "application/x-www-form-urlencoded"):
                return JSONResponse({"error": "log in with the login form"}, 415)
            length = request.headers.get("content-length", "")
            if not length.isdigit() or int(length) > MAX_LOGIN_BODY:
                return JSONResponse({"error": "the login form is too large"}, 413)
            form = await request.form()
            token = form.get("token")
            user = self.settings.user_for_token(token if isinstance(token, str) else None)
            if user is not None:
                return self._logged_in(user, next_path)
            error = "that token is not right"
            logger.warning("web: a wrong token was given from %s",
                           request.client.host if request.client else "?")
        html = self.templates.get_template("login.html").render(
            request=request, user=None, error=error, next=next_path, csrf="", path="/login",
            allow_writes=self.settings.allow_writes)
        return HTMLResponse(html, 401 if error else 200)

    def _logged_in(self, user: str, next_path: str) -> Response:
        response = RedirectResponse(next_path, 303)
        response.set_cookie(COOKIE, self.settings.open_session(user), max_age=SESSION_SECONDS,
                            httponly=True, samesite="strict", path="/")
        logger.info("web: %s logged in", user)
        return response

    async def logout(self, request: Request) -> Response:
        self.settings.close_session(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- pages ----------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        apis = await self.known()
        return self.page(request, "home.html", apis=apis, error=self.schema_problem)

    async def api_page(self, request: Request) -> Response:
        info = await self.api_info(request.path_params["api"])
        forms = {}
        for kind, members in (("rpc", info.rpcs), ("event", info.events)):
            for name, spec in members.items():
                schema = spec.get("parameters") or {}
                forms[(kind, name)] = {"fields": fields_for(schema), "schema": schema,
                                       "description": schema.get("description", "")}
        return self.page(request, "api.html", api=info, forms=forms)

    async def workers_page(self, request: Request) -> Response:
        return self.page(request, "workers.html", workers=await self._workers())

    async def _workers(self) -> list[dict[str, Any]]:
        try:
            return await data.workers(self.bus)
        except NotImplementedError as exc:
            raise Problem(501, f"cannot read worker state: {exc}") from None
        except BusError as exc:
            raise Problem(502, _clean(str(exc))) from None

    async def workers_json(self, request: Request) -> Response:
        return JSONResponse({"workers": await self._workers()})

    async def history_page(self, request: Request) -> Response:
        query = request.query_params
        known = await self.known()
        api_name, event = query.get("api", ""), query.get("event", "")
        rows: list[dict[str, Any]] = []
        error = ""
        if api_name:
            try:
                since = moment(query["since"]) if query.get("since") else None
                until = moment(query["until"]) if query.get("until") else None
                given = query.get("limit") or str(self.settings.history_limit)
                if not given.isdigit():
                    raise UsageError(f"the limit {given!r} is not a number: 1 to 1000")
                limit = int(given)
                if not 0 < limit <= 1000:
                    raise UsageError("the limit is a number from 1 to 1000")
                info = known.get(api_name)
                names = [event] if event else sorted(info.events) if info else []
                if not names or not valid_api_name(api_name) or not all(
                        valid_member_name(n) for n in names):
                    raise UsageError(f"name an event of API {api_name!r}")
                rows = await data.history(self.bus, [(api_name, n) for n in names], since,
                                          until, query.get("filter", ""), limit)
            except (UsageError, ValueError) as exc:
                error = str(exc)
            except NotImplementedError as exc:
                error = f"this event transport keeps no history: {exc}"
            except BusError as exc:
                error = _clean(str(exc))
        return self.page(request, "history.html", apis=known, rows=rows, error=error,
                         query=query)

    async def groups_page(self, request: Request) -> Response:
        try:
            announced = sorted({n for w in await data.workers(self.bus)
                                for n in w["api_names"]})
        except Exception:
            announced = []
        try:
            rows = await data.groups(self.bus, announced)
        except BusError as exc:
            raise Problem(502, _clean(str(exc))) from None
        return self.page(request, "groups.html", groups=rows)

    def _selection(self, values: Any) -> Selection:
        """The dead-letter filters of a query or a JSON body (400 when malformed: a
        filter that is not text, an API or event name that cannot be one, a bad limit)."""
        for key in ("api", "event", "since", "until"):
            if values.get(key) not in (None, "") and not isinstance(values.get(key), str):
                raise Problem(400, f"{key} must be text")
        try:
            api = values.get("api") or None
            event = values.get("event") or None
            if api is not None and not valid_api_name(api):
                raise UsageError(f"{api!r} is not an API name")
            events = [(api, event) if api and "." not in event else split_target(
                event, "event")] if event else []
            if any(not valid_member_name(name) for _, name in events):
                raise UsageError(f"{event!r} does not name an event")
            limit = values.get("limit")
            try:
                count = int(limit) if limit not in (None, "") else 200
            except (TypeError, ValueError):
                raise UsageError(f"the limit must be a number, not {limit!r}") from None
            if count < 1:
                raise UsageError("the limit must be 1 or more")
            return Selection(
                api=api if not events else None, events=events,
                since=moment(values["since"]) if values.get("since") else None,
                until=moment(values["until"]) if values.get("until") else None,
                limit=count)
        except (UsageError, ValueError) as exc:
            raise Problem(400, str(exc)) from None

    async def _letters(self, selection: Selection) -> list[dict[str, Any]]:
        try:
            letters = await engine.list_dead_letters(self.bus.client, selection)
        except BusError as exc:
            raise Problem(502, _clean(str(exc))) from None
        return [engine.letter_row(letter) for letter in letters]

    async def dead_letters_page(self, request: Request) -> Response:
        query = request.query_params
        try:
            rows, error = await self._letters(self._selection(query)), ""
        except Problem as problem:
            rows, error = [], problem.message
        apis = await self.known()
        if not error and self.schema_problem and not (query.get("api") or query.get("event")):
            error = (f"{self.schema_problem}; only the APIs registered here were searched "
                     "(choose an API to look at its dead letters)")
        return self.page(request, "dead_letters.html", rows=rows, query=query, error=error,
                         apis=apis)

    async def dead_letters_json(self, request: Request) -> Response:
        return JSONResponse({"dead_letters": await self._letters(
            self._selection(request.query_params))})

    async def config_page(self, request: Request) -> Response:
        return self.page(request, "config.html")

    # -- actions --------------------------------------------------------------------------

    async def call(self, request: Request) -> Response:
        api_name, name = request.path_params["api"], request.path_params["name"]
        kwargs = await self._checked_arguments(request, api_name, "rpc", name)
        logger.info("web: %s calls %s.%s()", self.who(request), api_name, name)
        try:
            result = await self.bus.client.call_rpc_async(api_name, name, kwargs)
        except RemoteError as exc:
            return JSONResponse({"error": f"{api_name}.{name}() raised {exc.remote_type}: "
                                          f"{_clean(exc.remote_message)}",
                                 "remote_type": exc.remote_type}, 502)
        except RpcTimeout as exc:
            return JSONResponse({"error": _clean(str(exc))}, 504)
        except BusError as exc:
            return JSONResponse({"error": _clean(str(exc))}, 502)
        return JSONResponse({"result": json.loads(json.dumps(result, default=str))})

    async def fire(self, request: Request) -> Response:
        from bus_core.cli_messages import fire_foreign

        api_name, name = request.path_params["api"], request.path_params["name"]
        kwargs = await self._checked_arguments(request, api_name, "event", name)
        logger.info("web: %s fires %s.%s", self.who(request), api_name, name)
        try:
            if api_name in self.bus.client.apis:
                message = await self.bus.client.fire_async(api_name, name, kwargs)
            else:
                message = await fire_foreign(self.bus, api_name, name, kwargs, None)
        except BusError as exc:
            return JSONResponse({"error": _clean(str(exc))}, 502)
        return JSONResponse({"id": message.id, "native_id": message.native_id})

    async def _checked_arguments(self, request: Request, api_name: str, kind: str,
                                 name: str) -> dict[str, Any]:
        """The request's arguments once the member's schema accepts them (else 400 with
        the schema's messages)."""
        body = await self.json_body(request)
        info = await self.api_info(api_name)
        members = info.rpcs if kind == "rpc" else info.events
        if name not in members:
            raise Problem(404, f"API {api_name!r} has no {kind} {name!r}")
        kwargs = body.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise Problem(400, "kwargs must be a JSON object")
        schema = members[name].get("parameters") or {}
        errors = validation_errors(schema, kwargs)
        if errors:
            first = errors[0]
            raise Problem(400, f"{first['path']}: {first['message']}", errors=errors)
        return kwargs

    async def dead_letter_action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("replay", "purge"):
            raise Problem(404, f"no dead-letter action {action!r}: replay or purge")
        body = await self.json_body(request)
        ids = body.get("ids") or []
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or not ids:
            raise Problem(400, "ids must be a non-empty list of dead letter ids")
        selection = self._selection(body)
        selection.limit = None
        try:
            letters = await engine.find(self.bus.client, ids, selection)
            run = engine.replay if action == "replay" else engine.purge
            outcomes = await run(self.bus.client, letters, self.who(request))
        except TransportError as exc:  # the bus failing, not the request
            raise Problem(502, _clean(str(exc))) from None
        except BusError as exc:  # ids not found (or on several streams)
            raise Problem(400, _clean(str(exc))) from None
        return JSONResponse({"outcomes": [
            {"id": o.letter.id, "stream": o.letter.stream, "done": o.done,
             "new_id": o.new_id, "error": o.error} for o in outcomes]})

    async def check_config(self, request: Request) -> Response:
        form = await request.form(max_part_size=data.MAX_CONFIG_BYTES)
        text = form.get("config")
        upload = form.get("file")
        if upload is not None and not isinstance(upload, str):
            raw = await upload.read(data.MAX_CONFIG_BYTES + 1)
            if raw:
                text = raw.decode("utf-8", "replace")
        if not isinstance(text, str) or not text.strip():
            raise Problem(400, "paste a config or choose a file")
        if len(text.encode()) > data.MAX_CONFIG_BYTES:
            raise Problem(413, f"the config is larger than {data.MAX_CONFIG_BYTES} bytes")
        valid, output = await data.check_config(text)
        return JSONResponse({"valid": valid, "output": output})


def create_app(bus: Bus, settings: Settings) -> Starlette:
    """The console's ASGI app for `bus`, with `settings` (users, writes)."""
    console = Console(bus, settings)
    g = console.guard
    routes = [
        Route("/login", console.login, methods=["GET", "POST"]),
        Route("/logout", g(console.logout, post=True), methods=["POST"]),
        Route("/", g(console.home)),
        Route("/apis/{api}", g(console.api_page)),
        Route("/workers", g(console.workers_page)),
        Route("/history", g(console.history_page)),
        Route("/groups", g(console.groups_page)),
        Route("/dead-letters", g(console.dead_letters_page)),
        Route("/config", g(console.config_page)),
        Route("/api/workers", g(console.workers_json)),
        Route("/api/dead-letters", g(console.dead_letters_json)),
        Route("/api/call/{api}/{name}", g(console.call, post=True, write=True),
              methods=["POST"]),
        Route("/api/fire/{api}/{name}", g(console.fire, post=True, write=True),
              methods=["POST"]),
        Route("/api/dead-letters/{action:str}",
              g(console.dead_letter_action, post=True, write=True), methods=["POST"]),
        Route("/api/config/check", g(console.check_config, post=True), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    async def token_and_headers(request: Request, call_next: Callable[..., Any]) -> Response:
        token = request.query_params.get("token")
        if token is not None and request.method == "GET":
            user = settings.user_for_token(token)
            if user is None:
                response: Response = JSONResponse({"error": "that token is not right"}, 401)
            else:  # the printed URL: log in, and drop the token from the address bar
                rest = {k: v for k, v in request.query_params.items() if k != "token"}
                path = "/" + request.url.path.lstrip("/\\")  # `//host` would leave the site
                target = path + (f"?{urlencode(rest)}" if rest else "")
                response = console._logged_in(user, target)
        else:
            response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    app = Starlette(routes=routes,
                    middleware=[Middleware(BaseHTTPMiddleware, dispatch=token_and_headers)])

    app.state.console = console
    return app


"""Schema documents -> an AsyncAPI 3.0 document: the contract of a set of APIs as it travels
on Redis in the Lightbus 1.x wire format (see docs/protocol).

The document describes the services that serve the APIs: each RPC is an operation that
*receives* calls on the API's `<api>:rpc_queue` list and replies to the return path the call
names; each event is an operation that *sends* entries to the API's stream (`<api>.*:stream`,
or `<api>.<event>:stream` with `stream_use: per_event`). Message payloads are the JSON
schemas of the shared schema (arguments, events' parameters, results); headers are the
metadata that travels beside them (a blob's `metadata`, an entry's bare fields).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from bus_core.config import Config

ASYNCAPI_VERSION = "3.0.0"
# The Redis transport's default URL (bus_redis.connection.DEFAULT_URL; bus-redis is optional).
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_ID = {"type": "string", "minLength": 1, "description": "the message id (opaque text)"}


def _ref(*parts: str) -> dict[str, str]:
    """A `$ref` to `#/<parts...>` (JSON Pointer escaping applied)."""
    escaped = (part.replace("~", "~0").replace("/", "~1") for part in parts)
    return {"$ref": "#/" + "/".join(escaped)}


def _payload(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """A shared-schema part as an AsyncAPI payload (a superset of draft-07): without
    `$schema`, which names the dialect of a standalone document."""
    payload = copy.deepcopy(dict(schema or {}))
    payload.pop("$schema", None)
    return payload


def _const(value: str, description: str) -> dict[str, Any]:
    return {"type": "string", "const": value, "description": description}


# -- servers ---------------------------------------------------------------------------------


def public_server(url: str) -> dict[str, Any]:
    """A Server Object for a Redis URL, with no credentials: the user part and the query
    (redis-py takes `?password=` there) are dropped, not masked."""
    scheme, _, rest = url.partition("://")
    rest = rest.split("#", 1)[0].split("?", 1)[0]
    authority, slash, path = rest.partition("/")
    host = authority.rsplit("@", 1)[-1]
    kind = {"redis+sentinel": "Redis Sentinel (the master it names)",
            "rediss+sentinel": "Redis Sentinel over TLS (the master it names)",
            "redis+cluster": "Redis Cluster", "rediss+cluster": "Redis Cluster over TLS",
            "rediss": "Redis over TLS", "unix": "Redis on a Unix socket"}.get(scheme, "Redis")
    server: dict[str, Any] = {"host": host or "localhost",
                              "protocol": "rediss" if scheme.startswith("rediss") else "redis",
                              "description": kind}
    if slash and path:
        server["pathname"] = "/" + path
    return server


class _Servers:
    """Server entries by redacted URL, named `redis`, `redis-2`, ... in order of use."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.names: dict[str, str] = {}
        self.uses: dict[str, list[str]] = {}

    def add(self, url: str, use: str) -> str:
        server = public_server(url)
        key = repr(sorted(server.items()))
        name = self.names.get(key)
        if name is None:
            name = "redis" if not self.names else f"redis-{len(self.names) + 1}"
            self.names[key] = name
            self.entries[name] = server
            self.uses[name] = []
        if use not in self.uses[name]:
            self.uses[name].append(use)
        return name

    def document(self) -> dict[str, Any]:
        servers = {}
        for name, server in self.entries.items():
            server = dict(server)
            server["description"] += ": " + "; ".join(self.uses[name])
            servers[name] = server
        return servers


def _transport(config: Config | None, api_name: str, kind: str) -> tuple[str, dict[str, Any]]:
    if config is None:
        return "redis", {}
    return config.api(api_name).transport(kind)


def _channel_servers(servers: _Servers, transport: tuple[str, dict[str, Any]],
                     use: str) -> list[dict[str, str]] | None:
    name, options = transport
    if name != "redis":
        return None
    return [_ref("servers", servers.add(str(options.get("url") or DEFAULT_REDIS_URL), use))]


# -- the document -----------------------------------------------------------------------------


def asyncapi_document(schemas: Mapping[str, Mapping[str, Any]], config: Config | None = None,
                      *, title: str | None = None, version: str = "1.0.0") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of `schemas` ({api name: {"rpcs", "events"}}, as
    `bus schema dump` writes them). `config` chooses servers (its Redis URLs), stream names
    (`stream_use`) and notes each channel's transport; None: Redis defaults, no servers."""
    servers = _Servers()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for api_name in sorted(schemas):
        document = schemas[api_name]
        _add_rpcs(api_name, document.get("rpcs") or {}, config, servers, channels,
                  operations, messages)
        _add_events(api_name, document.get("events") or {}, config, servers, channels,
                    operations, messages)
    names = ", ".join(sorted(schemas)) or "none"
    info: dict[str, Any] = {
        "title": title or f"Bus APIs: {names}",
        "version": version,
        "description": (
            f"The APIs {names}, from the schema their services share on the bus "
            "(`bus schema asyncapi`). Operations are those of the services that serve the "
            "APIs: they receive RPC calls and reply, and send events. On Redis, Bus and "
            "Lightbus 1.x peers use the same keys: an RPC call is a JSON blob "
            '`{"kwargs": <payload>, "metadata": <headers>}` pushed to `<api>:rpc_queue`; '
            "its result a blob of the same shape pushed to the call's return path; an "
            "event a stream entry whose bare fields are the headers and whose `:<name>` "
            "fields are the payload's properties, each as JSON."),
    }
    result: dict[str, Any] = {"asyncapi": ASYNCAPI_VERSION, "info": info,
                              "defaultContentType": "application/json"}
    if servers.entries:
        result["servers"] = servers.document()
    result["channels"] = channels
    result["operations"] = operations
    result["components"] = {"messages": messages}
    return result


def _add_rpcs(api_name: str, rpcs: Mapping[str, Any], config: Config | None,
              servers: _Servers, channels: dict[str, Any], operations: dict[str, Any],
              messages: dict[str, Any]) -> None:
    if not rpcs:
        return
    queue_id = f"{api_name}-rpc_queue"
    rpc_transport = _transport(config, api_name, "rpc")
    queue: dict[str, Any] = {
        "address": f"{api_name}:rpc_queue",
        "title": f"{api_name} RPC calls",
        "description": f"The Redis list of calls to the RPCs of `{api_name}`: callers "
                       "`RPUSH` a call blob, each call is popped by one worker.",
        "messages": {},
        "x-bus-transport": rpc_transport[0],
    }
    listed = _channel_servers(servers, rpc_transport, f"RPC calls of {api_name}")
    if listed:
        queue["servers"] = listed
    channels[queue_id] = queue
    result_transport = _transport(config, api_name, "result")
    reply_list = result_transport[1].get("reply_list", "shared")
    for rpc_name in sorted(rpcs):
        rpc = rpcs[rpc_name] or {}
        parameters = rpc.get("parameters") or {"type": "object"}
        summary = parameters.get("description")
        call_id, result_id, error_id = (f"{api_name}.{rpc_name}-{kind}"
                                        for kind in ("call", "result", "error"))
        call: dict[str, Any] = {
            "name": f"{api_name}.{rpc_name}()",
            "title": f"Call of {api_name}.{rpc_name}()",
            "contentType": "application/json",
            "headers": _call_headers(api_name, rpc_name),
            "payload": _payload(parameters),
            "correlationId": {"location": "$message.header#/id",
                              "description": "the call's id; its result names it as "
                                             "`rpc_message_id`"},
        }
        if summary:
            call["summary"] = summary
        messages[call_id] = call
        messages[result_id] = {
            "name": f"{api_name}.{rpc_name}() result",
            "title": f"Result of {api_name}.{rpc_name}()",
            "contentType": "application/json",
            "headers": _result_headers(error=False),
            "payload": {"type": "object", "additionalProperties": False,
                        "required": ["result"],
                        "properties": {"result": _payload(rpc.get("response"))}},
            "correlationId": {"location": "$message.header#/rpc_message_id"},
        }
        messages[error_id] = {
            "name": f"{api_name}.{rpc_name}() error",
            "title": f"Error result of {api_name}.{rpc_name}()",
            "description": "The procedure (or the worker) raised: the caller raises "
                           "`RemoteError`.",
            "contentType": "application/json",
            "headers": _result_headers(error=True),
            "payload": {"type": "object", "required": ["result"], "properties": {
                "result": {"type": "string", "description": "repr() of the exception"}}},
            "correlationId": {"location": "$message.header#/rpc_message_id"},
        }
        queue["messages"][call_id] = _ref("components", "messages", call_id)
        reply_channel_id = f"{api_name}.{rpc_name}-reply"
        reply: dict[str, Any] = {
            "address": None,
            "title": f"Results of {api_name}.{rpc_name}()",
            "description": (
                "The list the call's `return_path` names (`redis+key://<key>`): a Bus "
                "caller's shared reply list `bus:reply:<process>:<32 hex>` (`reply_list: "
                f"shared`), or the call's own key `{api_name}.{rpc_name}:result:<call id>` "
                "(Lightbus callers; Bus with `reply_list: per_call`). The worker `LPUSH`es "
                "one result blob to it."),
            "messages": {result_id: _ref("components", "messages", result_id),
                         error_id: _ref("components", "messages", error_id)},
            "x-bus-transport": result_transport[0],
            "x-bus-reply-list": reply_list,
        }
        listed = _channel_servers(servers, result_transport, f"RPC results of {api_name}")
        if listed:
            reply["servers"] = listed
        channels[reply_channel_id] = reply
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": _ref("channels", queue_id),
            "title": f"{api_name}.{rpc_name}()",
            "messages": [_ref("channels", queue_id, "messages", call_id)],
            "reply": {
                "address": {"location": "$message.header#/return_path",
                            "description": "the call's `metadata.return_path`, "
                                           "`redis+key://` followed by the list's key"},
                "channel": _ref("channels", reply_channel_id),
                "messages": [_ref("channels", reply_channel_id, "messages", result_id),
                             _ref("channels", reply_channel_id, "messages", error_id)],
            },
        }
        if summary:
            operation["summary"] = summary
        operations[_operation_id(operations, f"{api_name}.{rpc_name}", "rpc")] = operation


def _add_events(api_name: str, events: Mapping[str, Any], config: Config | None,
                servers: _Servers, channels: dict[str, Any], operations: dict[str, Any],
                messages: dict[str, Any]) -> None:
    if not events:
        return
    transport = _transport(config, api_name, "event")
    per_event = transport[0] == "redis" and transport[1].get("stream_use") == "per_event"
    listed = _channel_servers(servers, transport, f"events of {api_name}")
    for event_name in sorted(events):
        event = events[event_name] or {}
        message_id = f"{api_name}.{event_name}-event"
        messages[message_id] = {
            "name": f"{api_name}.{event_name}",
            "title": f"Event {api_name}.{event_name}",
            "contentType": "application/json",
            "headers": _event_headers(api_name, event_name),
            "payload": _payload(event.get("parameters") or {"type": "object"}),
            "correlationId": {"location": "$message.header#/id"},
        }
        if per_event:
            channel_id = f"{api_name}.{event_name}-stream"
            address = f"{api_name}.{event_name}:stream"
            what = f"the event `{api_name}.{event_name}` (`stream_use: per_event`)"
        else:
            channel_id = f"{api_name}-stream"
            address = f"{api_name}.*:stream"
            what = f"every event of `{api_name}` (`stream_use: per_api`)"
        channel = channels.get(channel_id)
        if channel is None:
            channel = channels[channel_id] = {
                "address": address,
                "title": f"Events on {address}",
                "description": f"The Redis stream of {what}: one `XADD` per event; each "
                               "listener reads it through its consumer group "
                               "`<service>-<listener>`.",
                "messages": {},
                "x-bus-transport": transport[0],
            }
            if listed:
                channel["servers"] = listed
        channel["messages"][message_id] = _ref("components", "messages", message_id)
        operations[_operation_id(operations, f"{api_name}.{event_name}", "event")] = {
            "action": "send",
            "channel": _ref("channels", channel_id),
            "title": f"{api_name}.{event_name}",
            "summary": f"Fire {api_name}.{event_name}.",
            "messages": [_ref("channels", channel_id, "messages", message_id)],
        }


def _operation_id(operations: Mapping[str, Any], wanted: str, kind: str) -> str:
    """`api.name`, or `api.name-<kind>` when an RPC and an event share the name."""
    return wanted if wanted not in operations else f"{wanted}-{kind}"


def _call_headers(api_name: str, rpc_name: str) -> dict[str, Any]:
    return {
        "type": "object", "description": "the call blob's `metadata`",
        "required": ["id", "api_name", "procedure_name", "return_path"],
        "properties": {
            "id": _ID,
            "api_name": _const(api_name, "the API"),
            "procedure_name": _const(rpc_name, "the RPC"),
            "return_path": {"type": "string", "pattern": "^redis\\+key://.+",
                            "description": "where the result goes: `redis+key://<list key>`"},
        },
    }


def _result_headers(error: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "id": _ID,
        "rpc_message_id": {"type": "string", "minLength": 1,
                           "description": "the id of the call this answers"},
        "error": {"type": "boolean", "const": error},
    }
    required = ["id", "rpc_message_id", "error"]
    if error:
        properties["trace"] = {"type": "string", "description": "the formatted traceback"}
    return {"type": "object", "description": "the result blob's `metadata`",
            "required": required, "properties": properties}


def _event_headers(api_name: str, event_name: str) -> dict[str, Any]:
    return {
        "type": "object", "description": "the stream entry's bare fields (not JSON)",
        "required": ["id", "api_name", "event_name", "version"],
        "properties": {
            "id": _ID,
            "api_name": _const(api_name, "the API"),
            "event_name": _const(event_name, "the event"),
            "version": {"type": "string", "pattern": "^[0-9]+$",
                        "description": "the API's version, a decimal integer"},
        },
    }


# -- rendering --------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Writes shared objects out in full each time (no `&id001` anchors)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(document: Mapping[str, Any], fmt: str = "yaml") -> str:
    """The document as YAML (the usual form of AsyncAPI documents) or JSON."""
    if fmt == "json":
        import json

        return json.dumps(document, indent=2) + "\n"
    return str(yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                         default_flow_style=False, width=100))


def select(schemas: Mapping[str, Mapping[str, Any]], wanted: Iterable[str] | None
           ) -> dict[str, Mapping[str, Any]]:
    """The schemas of the `wanted` APIs (all when None or empty); KeyError names a
    missing one."""
    names = list(wanted or ())
    if not names:
        return dict(schemas)
    missing = [name for name in names if name not in schemas]
    if missing:
        raise KeyError(missing[0])
    return {name: schemas[name] for name in names}

"""The options each Redis transport takes, as JSON Schemas for the config: free of redis-py,
so the plugin registers them (and `bus config check` checks them) without importing it."""

from __future__ import annotations

from typing import Any

OPTIONS_SCHEMA: dict[str, Any] = {
    "url": {"type": "string", "pattern": "^(rediss?(\\+(sentinel|cluster))?|unix)://",
            "description": "redis://[user:password@]host:port/db, rediss:// for TLS, "
                           "redis+sentinel://host:26379,.../master-name/db for Sentinel, "
                           "redis+cluster://host:port,.../ for a Redis Cluster"},
    "max_connections": {"type": "integer", "minimum": 2},
    "socket_timeout": {"type": ["number", "null"], "exclusiveMinimum": 0},
}


RPC_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **OPTIONS_SCHEMA,
        "batch_size": {"type": "integer", "minimum": 1},
        "blocking_timeout": {"type": "number", "exclusiveMinimum": 0},
        "worker_ttl": {
            "type": ["number", "null"], "minimum": 0.1,
            "description": "seconds a worker's liveness key outlives its last heartbeat "
                           "(refreshed 5 times as often): callers learn of a dead worker "
                           "about this long after it died; null: no liveness key and no "
                           "claim records (callers of a dead worker wait for their timeout)"},
    },
}


RESULT_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **OPTIONS_SCHEMA,
        "result_ttl": {"type": "number", "exclusiveMinimum": 0},
        "reply_list": {"enum": ["shared", "per_call"],
                       "description": "shared: one reply list per client (fast); per_call: "
                                      "Lightbus's {api}.{rpc}:result:{id} key per call"},
        "max_unclaimed_results": {
            "type": "integer", "minimum": 1,
            "description": "results kept (for result_ttl) that arrived on the shared reply "
                           "list with no call waiting for them; beyond it the oldest go"},
        "max_unclaimed_bytes": {
            "type": "integer", "minimum": 1024,
            "description": "bytes of such results kept, at most; beyond it the oldest go"},
        "worker_check_interval": {
            "type": ["number", "null"], "exclusiveMinimum": 0,
            "description": "seconds between a caller's checks that the workers running its "
                           "calls are alive (shared reply list only); null: no checks, "
                           "calls of a dead worker wait for their timeout"},
    },
}


EVENT_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **OPTIONS_SCHEMA,
        "stream_use": {"enum": ["per_api", "per_event"]},
        "max_stream_length": {"type": ["integer", "null"], "minimum": 1},
        "batch_size": {"type": "integer", "minimum": 1},
        "blocking_timeout": {"type": "number", "exclusiveMinimum": 0},
        "claim_idle": {"type": "number", "exclusiveMinimum": 0,
                       "description": "seconds an entry stays pending on a silent consumer "
                                      "before another consumer reclaims it"},
        "reclaim_interval": {"type": "number", "exclusiveMinimum": 0},
        "forget_consumers_after": {
            "type": ["number", "null"], "minimum": 0,
            "description": "seconds a listener group's consumer may sit idle holding nothing "
                           "before a starting worker deletes it (null: never)"},
        "dead_letter_suffix": {"type": "string", "minLength": 1},
        "min_replicas": {
            "type": "integer", "minimum": 0,
            "description": "a fire returns only once this many replicas have the entry "
                           "(WAIT after the XADD); 0: as soon as the master has it"},
        "min_replicas_timeout": {
            "type": "number", "exclusiveMinimum": 0,
            "description": "seconds a fire waits for min_replicas before it fails"},
        "min_replicas_for_acks": {
            "type": "boolean",
            "description": "also WAIT for min_replicas after acknowledging handled events "
                           "(a warning when they do not confirm: fewer redeliveries after a "
                           "failover)"},
    },
}


SCHEMA_OPTIONS = {"type": "object", "additionalProperties": False,
                  "properties": dict(OPTIONS_SCHEMA)}

"""Every exception Bus raises on purpose, so callers can catch one family: `BusError`."""

from __future__ import annotations


class BusError(Exception):
    """Base class of every error Bus raises deliberately."""


class ConfigError(BusError):
    """The configuration could not be loaded or is invalid; the message names the path and fix."""


class PluginError(BusError):
    """A plugin is misconfigured, misspelled a hook, or names something that does not exist."""


class UnknownApi(BusError):
    """An API name that is not registered (for firing) or does not exist."""


class UnknownRpc(BusError):
    """The API is known but has no RPC of that name."""


class UnknownEvent(BusError):
    """The API is known but declares no event of that name."""


class InvalidApi(BusError):
    """An Api subclass or Event declaration that cannot work (bad names, missing Meta)."""


class InvalidArguments(BusError, TypeError):
    """Arguments that cannot be sent: positional, missing, or unknown parameters."""


class InvalidMessage(BusError, ValueError):
    """A message that can never be handled as it is (it fails its schema, cannot be cast,
    lacks a field): refused before sending, and on receipt answered with an error (RPCs) or
    dead-lettered at once, without retries (events). Plugins raise it (or a subclass) to
    reject a message for good."""


class WireError(InvalidMessage):
    """A value cannot be put on the wire, or a received value cannot be cast back."""


class MalformedMessage(InvalidMessage):
    """A received message lacks required fields or cannot be decoded."""


class MessageTooLarge(BusError):
    """An encoded message is above `bus.max_message_size`."""


class RpcTimeout(BusError, TimeoutError):
    """No result arrived for an RPC within its timeout."""


class RpcWorkerLost(RpcTimeout):
    """The worker that took an RPC stopped (died, was killed, or abandoned the call when it
    stopped) before answering, so no result will come: raised well before the timeout.

    The call may have run in part or in full: its effects may or may not have happened. An
    RPC declared idempotent (`@rpc(idempotent=True)`, `apis.<api>.idempotent_rpcs`) is
    re-queued for another worker instead, so its caller sees this only when time ran out.
    A subclass of RpcTimeout: code that handles a timeout handles this too; catch it first
    to tell the two apart. `worker` names the lost worker; `idempotent` says whether that
    worker declared the RPC idempotent."""

    def __init__(self, message: str, *, worker: str = "", idempotent: bool = False) -> None:
        super().__init__(message)
        self.worker = worker
        self.idempotent = idempotent


class RemoteError(BusError):
    """The remote procedure raised; carries the remote type, message and traceback."""

    def __init__(self, api_name: str, procedure_name: str, remote_type: str,
                 remote_message: str, remote_traceback: str) -> None:
        self.api_name = api_name
        self.procedure_name = procedure_name
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        super().__init__(
            f"{api_name}.{procedure_name}() raised {remote_type}: {remote_message}\n"
            f"--- remote traceback ---\n{remote_traceback.rstrip()}"
        )


class TransportError(BusError):
    """A transport failed to deliver or receive (connection lost, backend refused)."""


class TransportUnavailable(TransportError):
    """The transport's backend cannot be reached right now (down, restarting, network):
    worth retrying, unlike a refusal such as bad credentials."""


class TransportNotFound(PluginError):
    """The config names a transport or serializer that no installed plugin provides."""


class Refused(InvalidMessage):
    """A plugin's "before" hook refuses this message for good (a policy: too large, not
    allowed, missing a field the plugin requires). Raise it from `bus_before_rpc_call`,
    `bus_before_event_fire` and the other refusing hooks: the caller gets it as is (the `bus`
    command prints `bus: error: ...`); on a worker the call is answered with an error and an
    event is dead-lettered at once, without retries, like any `InvalidMessage`."""

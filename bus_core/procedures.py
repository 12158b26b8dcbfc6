"""Running a served RPC: the server side of a call, from its received message to the result
to send back. The worker runs it for every call it takes off the queue; a local call
(`apis.<api>.local: true`) runs it in the caller's process with no queue in between."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bus_core.errors import UnknownApi, UnknownRpc
from bus_core.logs import message_fields
from bus_core.message_path import error_result
from bus_core.messages import ResultMessage, RpcMessage
from bus_core.plugins import now
from bus_core.values import to_wire

if TYPE_CHECKING:
    from bus_core.client import BusClient

logger = logging.getLogger("bus.worker")


async def execute(client: BusClient, message: RpcMessage, *,
                  with_traceback: bool) -> ResultMessage:
    """Run the procedure `message` calls, with the execution hooks around it; its result,
    or an error result (`with_traceback`: Lightbus's full traceback) for whatever it or
    its arguments raised. Never raises an Exception."""
    hooks = client.hooks
    started = now()
    result: Any = None
    error: BaseException | None = None
    try:
        procedure = client.procedure(message.api_name, message.procedure_name)
        if procedure is None:
            if message.api_name not in client.apis:
                raise UnknownApi(f"this worker does not serve API {message.api_name!r}")
            raise UnknownRpc(f"API {message.api_name!r} has no RPC "
                             f"{message.procedure_name!r}")
        await hooks.before_rpc_execution(client, message)
        kwargs = procedure.arguments(message)
        if procedure.is_async:
            result = to_wire(await procedure.function(**kwargs))
        else:
            result = to_wire(await client.call_user_code(procedure.function, False, **kwargs))
        await hooks.before_rpc_result_sent(client, message, result)
    except Exception as exc:
        error = exc
    await hooks.after_rpc_execution(client, message, result, error, now() - started)
    if error is None:
        return ResultMessage(rpc_message_id=message.id, result=result)
    logger.warning("%s() raised %s: %s", message.canonical_name, type(error).__name__, error,
                   extra={"bus": message_fields(message)})
    await hooks.on_handler_error(client, message, None, error, "reply_error")
    return error_result(message, error, with_traceback=with_traceback)

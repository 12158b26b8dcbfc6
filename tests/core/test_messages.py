"""The Lightbus-compatible message envelopes: strict out, liberal in."""

from __future__ import annotations

import pytest

from bus_core import MalformedMessage
from bus_core.messages import (
    EventMessage,
    ResultMessage,
    RpcMessage,
    event_from_blob,
    event_to_blob,
    result_from_blob,
    result_to_blob,
    rpc_from_blob,
    rpc_to_blob,
)


def test_rpc_blob_has_exactly_the_lightbus_metadata():
    message = RpcMessage(api_name="my_company.auth", procedure_name="check_password",
                         kwargs={"username": "admin"}, return_path="redis+key://x")
    blob = rpc_to_blob(message)
    assert set(blob) == {"metadata", "kwargs"}
    assert set(blob["metadata"]) == {"id", "api_name", "procedure_name", "return_path"}
    assert rpc_from_blob(blob) == message


def test_result_blob_puts_the_result_in_kwargs_and_error_as_boolean():
    ok = ResultMessage(rpc_message_id="r1", result=True)
    assert result_to_blob(ok) == {"metadata": {"id": ok.id, "rpc_message_id": "r1",
                                               "error": False},
                                  "kwargs": {"result": True}}
    failed = ResultMessage(rpc_message_id="r1", result="ValueError('x')", error=True,
                           trace="Traceback...")
    blob = result_to_blob(failed)
    assert blob["metadata"]["error"] is True and blob["metadata"]["trace"] == "Traceback..."
    assert result_from_blob(blob) == failed


def test_event_blob_round_trips():
    message = EventMessage(api_name="auth", event_name="user_registered",
                           kwargs={"username": "a"}, version=2)
    assert event_from_blob(event_to_blob(message)) == message


def test_unknown_metadata_keys_are_accepted():
    blob = {"metadata": {"id": "1", "api_name": "a", "procedure_name": "p",
                         "return_path": "x", "trace_id": "extra"}, "kwargs": {}}
    assert rpc_from_blob(blob).procedure_name == "p"


@pytest.mark.parametrize(("blob", "problem"), [
    ([], "not an object"),
    ({"kwargs": {}}, "no 'metadata' object"),
    ({"metadata": {"id": "1", "api_name": "a", "procedure_name": "", "return_path": "x"}},
     "procedure_name"),
    ({"metadata": {"id": "1", "api_name": "a", "procedure_name": "p", "return_path": "x"},
      "kwargs": []}, "'kwargs' is not an object"),
])
def test_malformed_rpc_blobs_say_what_is_wrong(blob, problem):
    with pytest.raises(MalformedMessage, match=problem):
        rpc_from_blob(blob)


def test_event_with_a_bad_version_is_malformed():
    blob = {"metadata": {"id": "1", "api_name": "a", "event_name": "e", "version": "v2"}}
    with pytest.raises(MalformedMessage, match="non-integer version"):
        event_from_blob(blob)


def test_message_ids_are_distinct_canonical_version_4_uuids() -> None:
    import uuid

    from bus_core.messages import new_message_id

    ids = [new_message_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical: lower-case, 8-4-4-4-12
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122

"""Unit tests of the engine-agnostic tool and format planning (service/tool_calls.py)."""

from __future__ import annotations

from service.tool_calls import closed


def test_objects_that_list_properties_are_closed() -> None:
    schema = {
        "type": "object",
        "properties": {"inner": {"type": "object", "properties": {"a": {"type": "string"}}}},
        "$defs": {"Item": {"properties": {"b": {}}}},
        "items": {"properties": {"d": {}}},
    }
    out = closed(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["inner"]["additionalProperties"] is False
    assert out["$defs"]["Item"]["additionalProperties"] is False
    assert out["items"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # a copy: the client's schema is untouched


def test_what_the_schema_says_is_kept() -> None:
    schema = {"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "integer"}}
    assert closed(schema) == schema
    assert closed({"type": "object"}) == {"type": "object"}  # no properties listed: any object


def test_data_is_not_mistaken_for_a_schema() -> None:
    schema = {
        "properties": {
            "properties": {"type": "object"},  # a property named "properties"
            "k": {"const": {"properties": {}}, "enum": [{"properties": {}}], "default": {"properties": {}}},
        }
    }
    out = closed(schema)
    assert set(out["properties"]) == {"properties", "k"}
    assert out["properties"]["k"] == schema["properties"]["k"]


def test_parts_that_add_up_are_not_closed() -> None:
    split = {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}
    assert closed(split) == split  # closing a branch would refuse the other's property
    mixed = {"properties": {"a": {}}, "allOf": [{"properties": {"b": {}}}]}
    assert closed(mixed) == mixed
    inside = {"anyOf": [{"properties": {"a": {}}}]}
    assert closed(inside)["anyOf"][0]["additionalProperties"] is False  # one whole option: closed

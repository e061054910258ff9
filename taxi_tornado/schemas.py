"""Message schemas: the JSON Schema (draft 2020-12) of each message type's `data`.

A plugin declares the schema beside its handler (`registry.add_message_type(...,
schema=...)`); the registry compiles it here once, at start-up, with jsonschema-rs (a
Rust validator: about 0.4 µs for a trip request's data, against 4 µs for fastjsonschema
and 100 µs for the pure-Python jsonschema; see docs/protocol.md). A frame's `data` is
checked before its handler runs: the valid ones, nearly all, cost one `is_valid` call;
only a failure walks the errors, to name every wrong field at once.

Field errors keep the shape the API always had: keyed by the top-level field of `data`
(`data` itself when it is not even the right type, `non_field_errors` for what no field
owns), with sentences a person can read; an error deeper down says where, as
`lat: Must be at most 90.` under `pick_up`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jsonschema_rs

Schema = Mapping[str, Any] | bool
FieldErrors = dict[str, list[str]]
# Checks one frame's `data`: None when it is valid, else its field errors.
DataCheck = Callable[[Any], FieldErrors | None]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
NON_FIELD = "non_field_errors"
NOT_BLANK = "\\S"  # the pattern of a string that holds more than white space
TYPE_NAMES = {"object": "an object", "array": "a list", "string": "a string",
              "number": "a number", "integer": "an integer", "boolean": "true or false",
              "null": "null"}


class SchemaError(ValueError):
    """A schema that is not valid JSON Schema (draft 2020-12)."""


def check_schema(schema: Any) -> None:
    """Raise SchemaError, saying what is wrong, unless `schema` is valid JSON Schema."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, Mapping):
        raise SchemaError(f"a schema is a JSON object or a boolean, not {schema!r}")
    try:
        jsonschema_rs.meta.validate(dict(schema))
        jsonschema_rs.Draft202012Validator(dict(schema))  # also resolves every $ref
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError,
            ValueError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise SchemaError(first_line) from None


def compile_check(schema: Schema | None) -> DataCheck | None:
    """The check of `data` against `schema`, compiled now; None when `schema` accepts any
    value (absent, `{}` or `true`), so that such a type costs nothing per frame."""
    if schema is None or schema is True or schema == {}:
        return None
    check_schema(schema)
    validator = jsonschema_rs.Draft202012Validator(
        schema if isinstance(schema, bool) else dict(schema))

    def check(data: Any) -> FieldErrors | None:
        if validator.is_valid(data):
            return None
        return field_errors(validator.iter_errors(data))

    return check


def field_errors(errors: Any) -> FieldErrors:
    """jsonschema-rs errors as field errors: `{"field": ["sentence", ...]}`."""
    found: FieldErrors = {}
    for error in errors:
        field, message = _where_and_what(error)
        messages = found.setdefault(field, [])
        if message not in messages:
            messages.append(message)
    return found or {NON_FIELD: ["The data is not valid."]}


def _where_and_what(error: Any) -> tuple[str, str]:
    path = [str(step) for step in error.instance_path]
    kind = error.kind
    if not path:
        if kind.name == "required":
            return str(kind.property), _sentence(error)
        if kind.name == "type":
            return "data", _sentence(error)
        return NON_FIELD, _sentence(error)
    field, inner = path[0], path[1:]
    if kind.name == "required":
        inner.append(str(kind.property))
    sentence = _sentence(error)
    return field, f"{'.'.join(inner)}: {sentence}" if inner else sentence


def _sentence(error: Any) -> str:
    """What is wrong, in the words the API's field errors always used."""
    kind = error.kind
    name = kind.name
    if name == "required":
        return "This field is required."
    if name == "type":
        types = sorted(kind.types, key=lambda name: name == "null")  # "or null" last
        return f"Expected {' or '.join(TYPE_NAMES.get(t, t) for t in types)}."
    if name == "minLength":
        if kind.limit == 1:
            return "This field may not be blank."
        return f"Ensure this field has at least {kind.limit} characters."
    if name == "maxLength":
        return f"Ensure this field has no more than {kind.limit} characters."
    if name in ("minimum", "exclusiveMinimum"):
        return f"Must be {'at least' if name == 'minimum' else 'more than'} {kind.limit}."
    if name in ("maximum", "exclusiveMaximum"):
        return f"Must be {'at most' if name == 'maximum' else 'less than'} {kind.limit}."
    if name == "enum":
        return f"{_quoted(error.instance)} is not a valid choice."
    if name == "pattern" and kind.pattern == NOT_BLANK:
        return "This field may not be blank."
    return str(error.message)


def _quoted(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)

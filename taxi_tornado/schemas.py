"""Message schemas: the JSON Schema (draft 2020-12) of each message type's `data`.

A plugin declares the schema beside its handler (`registry.add_message_type(...,
schema=...)`); the registry compiles it here once, at start-up, with jsonschema-rs (a
Rust validator: about 0.4 µs for a trip request's data, against 4 µs for fastjsonschema
and 100 µs for the pure-Python jsonschema; see docs/protocol.md). A frame's `data` is
checked before its handler runs: the valid ones, nearly all, cost one `is_valid` call;
only a failure walks the errors, to name every wrong field at once.

A failure costs little and answers briefly whatever a client sends: jsonschema-rs builds
every error of a walk before handing out the first (about 7 µs each, and a 64 KiB frame
can hold 14,000 wrong values), so `data` of more than MAX_WALKED values gets only its
first error; at most MAX_ERRORS errors are turned into sentences, each at most
MAX_MESSAGE characters (a message that quotes the input quotes it as JSON, cut short).

Field errors keep the shape the API always had: keyed by the top-level field of `data`
(`data` itself when it is not even the right type, `non_field_errors` for what no field
owns), with sentences a person can read; an error deeper down says where, as
`lat: Must be at most 90.` under `pick_up`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any

import jsonschema_rs
import orjson

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
MAX_WALKED = 256  # values in `data` past which only its first error is looked for
MAX_ERRORS = 20  # errors turned into sentences, at most, per frame
MAX_MESSAGE = 200  # characters per sentence and per field name, at most


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
        if _more_values_than(data, MAX_WALKED):
            return field_errors(_first_error(validator, data))
        return field_errors(validator.iter_errors(data))

    return check


def field_errors(errors: Iterable[Any]) -> FieldErrors:
    """jsonschema-rs errors as field errors: `{"field": ["sentence", ...]}`, from the
    first MAX_ERRORS of them, each sentence once per field, in order."""
    found: dict[str, dict[str, None]] = {}  # a dict per field: a set that keeps order
    for error in islice(errors, MAX_ERRORS):
        field, message = _where_and_what(error)
        found.setdefault(_clip(field), {})[_clip(message)] = None
    return {field: list(messages) for field, messages in found.items()} or {
        NON_FIELD: ["The data is not valid."]}


def _more_values_than(data: Any, limit: int) -> bool:
    """Whether `data` holds more than `limit` JSON values (it counts too); stops there."""
    pending, seen = [data], 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def _first_error(validator: jsonschema_rs.Draft202012Validator, data: Any) -> list[Any]:
    """The first error of invalid `data` alone (validate() stops at it)."""
    try:
        validator.validate(data)
    except jsonschema_rs.ValidationError as error:
        return [error]
    return []


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


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
    if name == "maxProperties":
        return f"Ensure this field has no more than {kind.limit} entries."
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
    """`value` as JSON, cut short: a sentence never echoes the whole input."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # not JSON (data always is: only a direct call gets here)
        text = repr(value)
    return _clip(text)

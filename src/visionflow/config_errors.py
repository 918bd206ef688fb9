"""How :mod:`visionflow.config` words a params error: the key path, what is wrong, a did-you-mean.

``<family>.train.lr: must be > 0``; ``<family>.modle: unknown key 'modle' (did you mean
'model'?); valid: ...``. Pure pydantic, no params schema.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError


class KeyPathError(ValueError):
    """Raised by a validator to report ``message`` at ``loc`` (a key path) rather than where it runs."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc, self.message = loc, message


def unknown_choice(value: str, valid: tuple[str, ...] | list[str], what: str) -> str:
    """``unknown <what> <value> (did you mean ...?); valid: ...``."""
    close = difflib.get_close_matches(value, valid, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {value!r}{hint}; valid: {', '.join(valid)}"


def key_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def describe(error: dict, model: type[BaseModel]) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    got = f" (got {error['input']!r})" if "input" in error and kind not in ("missing", "extra_forbidden") else ""
    if kind == "greater_than":
        return f"must be > {ctx['gt']}{got}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}{got}"
    if kind == "less_than":
        return f"must be < {ctx['lt']}{got}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}{got}"
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        valid = _valid_keys(model, error["loc"][:-1])
        return unknown_choice(str(error["loc"][-1]), valid, "key") if valid else "unknown key"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg'][0].lower()}{error['msg'][1:]}{got}"


def _valid_keys(model: type[BaseModel], parent: tuple) -> list[str]:
    """The keys allowed at ``parent`` (a pydantic loc), found by walking the model's fields."""
    current: Any = model
    for part in parent:
        current = _inner_model(current)
        if isinstance(part, int):
            continue
        fields = _fields_by_key(current)
        if part not in fields:
            return []
        current = fields[part].annotation
    return list(_fields_by_key(_inner_model(current)))


def _fields_by_key(model: Any) -> dict[str, Any]:
    """A model's fields under the keys a params file uses (aliases where set)."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return {}
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _inner_model(annotation: Any) -> Any:
    """The BaseModel inside ``X | None`` or ``list[X]``, else the annotation itself."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def booleans_taken_as_numbers(raw: Any, validated: Any, loc: tuple = ()) -> list[tuple]:
    """Key paths where the file has ``true``/``false`` but the params hold a number.

    Pydantic's lax mode reads ``epochs: true`` as 1; comparing the file with what was
    validated catches that for every field, nested lists included, without per-field rules.
    """
    if isinstance(raw, bool):
        return [] if isinstance(validated, bool) else [loc]
    if isinstance(raw, dict) and isinstance(validated, dict):
        return [path for key, value in raw.items() if key in validated
                for path in booleans_taken_as_numbers(value, validated[key], (*loc, key))]
    if isinstance(raw, (list, tuple)) and isinstance(validated, (list, tuple)):
        if len(raw) == len(validated):
            return [path for i, (value, out) in enumerate(zip(raw, validated))
                    for path in booleans_taken_as_numbers(value, out, (*loc, i))]
        # A validator reshaped the list (sorted, deduplicated): judge it whole.
        if any(isinstance(v, bool) for v in raw) and not any(isinstance(v, bool) for v in validated):
            return [loc]
    return []


def error_message(source: str, lines: list[str]) -> str:
    """One line for one error (a CLI prints it as is); a list for several."""
    if len(lines) == 1:
        return f"{source}: {lines[0]}"
    return f"{source}: invalid params\n  " + "\n  ".join(lines)




def describe_errors(source: str, exc: ValidationError, model: type[BaseModel]) -> str:
    """pydantic's errors as ``<source>: <key path>: <what is wrong>`` lines."""
    lines = []
    for error in exc.errors():
        loc, message = error["loc"], describe(error, model)
        if loc and loc[-1] == "[key]":  # a dict key that is not one of the allowed ones
            loc, message = loc[:-1], f"unknown key: {message}"
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, KeyPathError):
            loc, message = cause.loc, cause.message
        lines.append(f"{key_path(loc) or '<root>'}: {message}")
    return error_message(source, lines)

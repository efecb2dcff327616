"""The JSON request bodies of the service (pydantic models; FastAPI derives /docs from them).

``options`` is generated from :data:`heta_fast.options.OPTION_SPECS`: one field per option, documented with the
spec's type, range, choices and help; unknown names are rejected (422 naming the field). The values are
checked by :class:`~heta_fast.HetaOptions` itself, so the service gives the same messages as the library,
the command line and batch jobs.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, WithJsonSchema, create_model

from ..options import OPTION_SPECS, PRESETS, OptionSpec


def _json_schema(spec: OptionSpec) -> dict:
    """The spec as JSON Schema (for /docs; validation is :class:`HetaOptions`')."""
    if spec.many:
        return {"type": "array", "items": {"enum": list(spec.words)}, "minItems": 1, "uniqueItems": True}
    if spec.spans:
        pair = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2}
        return {"anyOf": [{"type": "array", "items": pair, "minItems": 1}, {"type": "null"}]}
    kinds: list[dict] = []
    if spec.number is not None:
        num: dict[str, Any] = {"type": "integer" if spec.number is int else "number"}
        if spec.minimum is not None:
            num["minimum"] = spec.minimum
        if spec.maximum is not None:
            num["maximum"] = spec.maximum
        if spec.below is not None:
            num["exclusiveMaximum"] = spec.below
        kinds.append(num)
    if spec.words:
        kinds.append({"enum": list(spec.words)})
    if spec.nullable:
        kinds.append({"type": "null"})
    return kinds[0] if len(kinds) == 1 else {"anyOf": kinds}


def _option_field(spec: OptionSpec):
    schema = {**_json_schema(spec), "description": spec.help, "default": _json_default(spec.default)}
    # None is only the "not given" marker: model_dump(exclude_unset=True) passes the fields the client sent.
    return Annotated[Any, WithJsonSchema(schema)], Field(None, description=spec.help)


def _json_default(value):
    return list(value) if isinstance(value, tuple) else value


AttributeOptions = create_model(
    "AttributeOptions",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Any HetaOptions field (unset fields keep the server's options or the preset's).",
    **{spec.name: _option_field(spec) for spec in OPTION_SPECS},
)


class AttributeRequest(BaseModel):
    """Body of ``POST /attribute`` (see :mod:`heta_fast.service.app`)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description="input text (needs the model's tokenizer)")
    # StrictInt: JSON true is not position 1, and "3" or 3.0 is not an integer (pydantic's lax mode converts them).
    ids: list[StrictInt] | None = Field(None, description="input token ids, instead of text")
    target: StrictInt | str | None = Field(
        None, description="position (int, negative from the end), continuation (string), or omitted: last token"
    )
    generate: StrictInt | None = Field(None, ge=1, description="greedy-generate N tokens, explain each (at most the server's max_generate)")
    preset: str | None = Field(None, description=f"one of {', '.join(PRESETS)}")
    options: AttributeOptions = Field(default_factory=AttributeOptions)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str

"""Command-line flags derived from a settings schema: one `--field-name` per field, so the CLI never
lists an option by hand."""
from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from .settings import Settings


def add_arguments(parser: argparse.ArgumentParser, cls: type[Settings], exclude: tuple[str, ...] = ()) -> None:
    """One `--field-name` flag per field (default None = "not given"; help shows the schema's default)."""
    for name, field in cls.model_fields.items():
        if name in exclude:
            continue
        default = field.get_default(call_default_factory=True)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        kind = _flag_type(field.annotation)
        kwargs: dict[str, Any] = {"default": None, "help": f"{field.description or name} (default: {shown})"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, **kwargs)


def given(args: argparse.Namespace, cls: type[Settings]) -> dict:
    """The flags of `cls` that were given on the command line."""
    return {k: v for k, v in vars(args).items() if k in cls.model_fields and v is not None}


def _flag_type(annotation):
    """The argparse type for a field's annotation: int, float, bool, str, or a comma list of them."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(options) == 1:
        annotation = options[0]
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is list:
        item = typing.get_args(annotation)[0]
        return lambda text: [item(t) for t in _split(text)]
    return annotation if annotation in (int, float, bool) else str


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]

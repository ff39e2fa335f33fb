"""Reading provider configuration (``config: list<field>``) and credential fields.

    from latchkey_sdk import config
    base = config.require(cfg, "base-url")          # invalid-config "missing config base-url"
    key = config.require_field(cred, "api-key")     # invalid-config naming the field
    scope = config.get(cfg, "scope", "read")
"""

from typing import List, Optional

from wit_world.imports.latchkey_provider_types import Credential, Field

from . import errors

__all__ = ["get", "require", "field", "require_field", "fields"]


def get(fields: List[Field], name: str, default: Optional[str] = None) -> Optional[str]:
    """The value of field ``name``, else ``default``."""
    for f in fields:
        if f.name == name:
            return f.value
    return default


def require(fields: List[Field], name: str) -> str:
    """The value of config field ``name``; raises ``invalid-config`` naming it when it
    is missing or empty."""
    value = get(fields, name)
    if value is None or value == "":
        raise errors.invalid_config(f"missing config {name}")
    return value


def field(cred: Credential, name: str) -> Optional[str]:
    """The value of credential field ``name``, if present."""
    return get(cred.fields, name)


def require_field(cred: Credential, name: str) -> str:
    """The value of credential field ``name``; raises ``invalid-config`` naming the
    field (never its value) when it is missing or empty."""
    value = field(cred, name)
    if value is None or value == "":
        raise errors.invalid_config(f"credential of kind {cred.kind} has no field {name}")
    return value


def fields(**values: str) -> List[Field]:
    """A field list from keyword arguments; underscores become dashes
    (``fields(api_key="…")`` is the field ``api-key``)."""
    return [Field(name=k.replace("_", "-"), value=v) for k, v in values.items()]

"""The latchkey SDK for providers written in Python (componentize-py).

Helpers over the plugin contract in ``wit/`` (world ``provider-plugin``), the same as
the Rust SDK's:

- :mod:`~latchkey_sdk.http`: blocking HTTP with JSON, headers, timeouts and bodies of
  any size over wasi:http;
- :mod:`~latchkey_sdk.config`: config and credential fields, with clear missing-key
  errors;
- :mod:`~latchkey_sdk.errors`: the contract's error variants (``rejected``,
  ``unavailable``, ``denied``, ``unsupported``, ``invalid-config``);
- :mod:`~latchkey_sdk.validate`: ``valid``/``invalid`` answers, one-request key checks,
  redaction of service text;
- :mod:`~latchkey_sdk.sign`: HMAC-SHA256/512, SHA-2, hex and base64;
- :mod:`~latchkey_sdk.clock`: wall clock, randomness, RFC 3339;
- :mod:`~latchkey_sdk.log`: the agent's log.

Make the package importable by the build with ``componentize-py … componentize app
-p <this folder's parent> -o provider.wasm`` (``plugin-sdk/python`` in a checkout).
"""

from typing import Sequence

from wit_world.imports.latchkey_provider_types import (
    Credential,
    Field,
    Operation,
    Permission,
    ProviderInfo,
    Validation,
)

from . import clock, config, errors, http, log, sign, validate

__version__ = "0.1.0"

__all__ = [
    "clock",
    "config",
    "errors",
    "http",
    "log",
    "sign",
    "validate",
    "info",
    "credential",
    "Credential",
    "Field",
    "Operation",
    "Permission",
    "ProviderInfo",
    "Validation",
]

_OPERATIONS = {
    "validate": Operation.VALIDATE,
    "create-pending": Operation.CREATE_PENDING,
    "retire": Operation.RETIRE,
    "refresh": Operation.REFRESH,
}


def info(
    name: str,
    version: str,
    kinds: Sequence[str],
    operations: Sequence[str],
    http_authorities: Sequence[str] = (),
    sql_connections: Sequence[str] = (),
) -> ProviderInfo:
    """The ``info`` answer; operations by their WIT names (``"create-pending"``)."""
    try:
        ops = [_OPERATIONS[o] for o in operations]
    except KeyError as e:
        raise ValueError(f"unknown operation {e.args[0]!r}: one of {', '.join(_OPERATIONS)}") from None
    return ProviderInfo(
        name=name,
        version=version,
        kinds=list(kinds),
        operations=ops,
        http_authorities=list(http_authorities),
        sql_connections=list(sql_connections),
    )


def credential(kind: str, fields: dict, expires_at: "int | None" = None) -> Credential:
    """A credential of ``kind`` from a dict of field values (e.g. what ``refresh``
    returns); the host copies over fields it does not return."""
    return Credential(
        kind=kind,
        fields=[Field(name=k, value=v) for k, v in fields.items()],
        expires_at=expires_at,
    )

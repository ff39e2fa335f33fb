"""Example latchkey provider in Python (componentize-py).

Checks that an API key has the configured prefix and a plausible length, and
reports one permission. Real providers call their service over wasi:http; this
one stays offline so the example builds and runs anywhere.
"""

from typing import List

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log
from wit_world.imports.latchkey_provider_types import (
    Credential,
    Field,
    Operation,
    Permission,
    ProviderError_InvalidConfig,
    ProviderError_Unsupported,
    ProviderInfo,
    Validation,
)


def _get(fields: List[Field], name: str):
    for f in fields:
        if f.name == name:
            return f.value
    return None


class Provider(exports.Provider):
    def info(self) -> ProviderInfo:
        return ProviderInfo(
            name="example-python",
            version="0.1.0",
            kinds=["api-key"],
            operations=[Operation.VALIDATE],
            http_authorities=[],
            sql_connections=[],
        )

    def validate(self, config: List[Field], cred: Credential) -> Validation:
        prefix = _get(config, "prefix") or ""
        key = _get(cred.fields, "key")
        if key is None:
            raise Err(ProviderError_InvalidConfig("credential has no field key"))
        # Log field names and lengths only, never values.
        log.log(log.Level.DEBUG, f"checking key of length {len(key)}")
        valid = key.startswith(prefix) and len(key) >= len(prefix) + 16
        return Validation(
            valid=valid,
            detail="key has the expected shape" if valid else "key has the wrong shape",
            permissions=[Permission(name="read", granted=valid)],
            expires_at=None,
        )

    def create_pending(self, config: List[Field], current: Credential) -> Credential:
        raise Err(ProviderError_Unsupported("create-pending"))

    def retire(self, config: List[Field], previous: Credential) -> None:
        raise Err(ProviderError_Unsupported("retire"))

    def refresh(self, config: List[Field], cred: Credential) -> Credential:
        raise Err(ProviderError_Unsupported("refresh"))

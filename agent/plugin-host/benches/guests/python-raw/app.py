"""The example provider's `validate`, written against the wasi:http bindings by hand
(no SDK): the baseline the SDK's overhead is measured against in
`benches/plugin.rs`. Not a model to copy: it has no timeout, no redaction and no
error mapping beyond what the measurement needs.
"""

import json
from typing import List

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import outgoing_handler
from wit_world.imports import wasi_http_types as wh
from wit_world.imports.latchkey_provider_types import (
    Credential,
    Field,
    Operation,
    Permission,
    ProviderError_Unavailable,
    ProviderError_Unsupported,
    ProviderInfo,
    Validation,
)
from wit_world.imports.streams import StreamError_Closed


def _get(fields: List[Field], name: str) -> str:
    for f in fields:
        if f.name == name:
            return f.value
    raise Err(ProviderError_Unavailable(f"missing {name}"))


class Provider(exports.Provider):
    def info(self) -> ProviderInfo:
        return ProviderInfo(
            name="bench-python-raw",
            version="0.1.0",
            kinds=["access-token"],
            operations=[Operation.VALIDATE],
            http_authorities=[],
            sql_connections=[],
        )

    def validate(self, config: List[Field], cred: Credential) -> Validation:
        base = _get(config, "base-url")
        token = _get(cred.fields, "access-token")
        scheme, rest = base.split("://", 1)
        headers = wh.Fields.from_list([("authorization", f"Bearer {token}".encode())])
        req = wh.OutgoingRequest(headers)
        req.set_method(wh.Method_Get())
        req.set_scheme(wh.Scheme_Https() if scheme == "https" else wh.Scheme_Http())
        req.set_authority(rest)
        req.set_path_with_query("/v1/token/introspect")
        body = req.body()
        future = outgoing_handler.handle(req, None)
        wh.OutgoingBody.finish(body, None)
        with future:
            while True:
                got = future.get()
                if got is not None:
                    break
                with future.subscribe() as p:
                    p.block()
            if isinstance(got.value, Err):
                raise Err(ProviderError_Unavailable("request failed"))
            with got.value.value as response:
                status = response.status()
                incoming = response.consume()
                chunks = []
                with incoming.stream() as stream:
                    while True:
                        try:
                            chunks.append(stream.blocking_read(65536))
                        except Err as e:
                            if isinstance(e.value, StreamError_Closed):
                                break
                            raise Err(ProviderError_Unavailable("read failed")) from None
                wh.IncomingBody.finish(incoming).__exit__(None, None, None)
        if status != 200:
            return Validation(valid=False, detail=f"refused: {status}", permissions=[], expires_at=None)
        answer = json.loads(b"".join(chunks))
        return Validation(
            valid=True,
            detail=f"token accepted for account {answer['account']}",
            permissions=[Permission(name=s, granted=True) for s in answer["scopes"]],
            expires_at=None,
        )

    def create_pending(self, config: List[Field], current: Credential) -> Credential:
        raise Err(ProviderError_Unsupported("create-pending"))

    def retire(self, config: List[Field], previous: Credential) -> None:
        raise Err(ProviderError_Unsupported("retire"))

    def refresh(self, config: List[Field], cred: Credential) -> Credential:
        raise Err(ProviderError_Unsupported("refresh"))

"""Writes secrets with the clients teams use (hvac and the `bao` CLI for OpenBao KV v2,
boto3 for AWS Secrets Manager) and reads them through latchkey agents over mTLS with
httpx, comparing every field, JSON type and version with what the upstream itself
returns. Run by tests/e2e/roundtrip.rs, which starts the servers and the agents.

Exit 0 when everything matches; otherwise prints each mismatch and exits 1.
"""

import base64
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time

import boto3
import httpx
import hvac

env = os.environ
problems = []

TYPED = {
    "port": 5432,
    "enabled": True,
    "disabled": False,
    "nothing": None,
    "float": 1.5,
    "negative": -3,
    "nested": {"a": [1, 2], "b": {"c": None, "d": "deep"}},
    "list": ["x", 1, None, {"k": "v"}],
    "text": "5432",
}
UNICODE = {
    "emoji_zwj": "\U0001F469\u200D\U0001F4BB",
    "family": "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466",
    "cjk": "\u6f22\u5b57\u304b\u306a\u30ab\u30ca",
    "rtl": "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "combining": "e\u0301 n\u0303 a\u030a",
    "bom": "\ufeffstarts with a BOM",
    "nul": "before\u0000after",
    "crlf": "line one\r\nline two\nline three\r",
    "empty": "",
    "quotes": "\"'\\`$(x)",
}
CASES = {
    "rt/typed": TYPED,
    "rt/nested/deeper/still/path": {"k": "v"},
    "rt/twenty": {f"field_{i:02}": f"value {i}" for i in range(20)},
    "rt/large": {"blob": "".join(chr(0x21 + (i * 7) % 94) for i in range(50 * 1024))},
    "rt/unicode": UNICODE,
}


def agent(base, prefix="AGENT"):
    tls = ssl.create_default_context(cafile=env["AGENT_CA"])
    tls.load_cert_chain(env[f"{prefix}_CERT"], env[f"{prefix}_KEY"])
    return httpx.Client(base_url=base, verify=tls, timeout=10)


def served(client, path, want_fields, want_version=None, deadline=20.0):
    """Polls the agent until `path` serves `want_fields`; records a problem if not."""
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        client.post("/v1/sync")
        r = client.get(f"/v1/secrets/{path}")
        last = (r.status_code, r.text[:300])
        if r.status_code == 200:
            body = r.json()
            if body["fields"] == want_fields and (
                want_version is None or body["version"] == want_version
            ):
                # Types too: 5432 is not "5432", True is not 1.
                if json.dumps(body["fields"], sort_keys=True) == json.dumps(
                    want_fields, sort_keys=True
                ):
                    return body
        time.sleep(0.2)
    problems.append(f"{path}: agent never served {json.dumps(want_fields)[:200]} "
                    f"(version {want_version}); last answer {last}")
    return None


def openbao():
    bao = hvac.Client(url=env["BAO_ADDR"], token=env["BAO_TOKEN"])
    for path, data in CASES.items():
        bao.secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point="secret")
    # The bao CLI, from a JSON file (the way it keeps types).
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"port": 6543, "tls": {"verify": False}, "name": "from the CLI"}, f)
    subprocess.run(
        [env["BAO_BIN"], "kv", "put", "-mount=secret", "rt/cli", f"@{f.name}"],
        check=True,
        capture_output=True,
        env={**env, "BAO_ADDR": env["BAO_ADDR"], "BAO_TOKEN": env["BAO_TOKEN"]},
    )
    client = agent(env["AGENT_BAO"])
    for path in list(CASES) + ["rt/cli"]:
        upstream = bao.secrets.kv.v2.read_secret_version(
            path=path, mount_point="secret", raise_on_deleted_version=True
        )
        want = upstream["data"]["data"]
        version = upstream["data"]["metadata"]["version"]
        if path in CASES and want != CASES[path]:
            problems.append(f"{path}: OpenBao itself changed the value (not the agent's doing)")
        served(client, path, want, version)

    # A second version written with hvac is followed, with its number.
    bao.secrets.kv.v2.create_or_update_secret(
        path="rt/typed", secret={**TYPED, "port": 5433}, mount_point="secret"
    )
    served(client, "rt/typed", {**TYPED, "port": 5433}, 2)
    old = client.get("/v1/secrets/rt/typed", params={"version": 1})
    if old.status_code != 200 or old.json()["fields"] != TYPED:
        problems.append(f"rt/typed?version=1: {old.status_code} {old.text[:200]}")

    # Written back through the agent: OpenBao holds the same types.
    r = client.put(
        "/v1/secrets/rt/from-agent",
        json={"fields": {"port": 1, "on": True, "none": None, "obj": {"a": [1]}, "s": "1"}},
    )
    if r.status_code != 200:
        problems.append(f"agent write: {r.status_code} {r.text[:200]}")
    else:
        back = bao.secrets.kv.v2.read_secret_version(
            path="rt/from-agent", mount_point="secret", raise_on_deleted_version=True
        )
        got = back["data"]["data"]
        if got != {"port": 1, "on": True, "none": None, "obj": {"a": [1]}, "s": "1"}:
            problems.append(f"agent write reached OpenBao as {got}")


def aws():
    sm = boto3.client(
        "secretsmanager",
        endpoint_url=env["MOTO_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    for path, data in CASES.items():
        sm.create_secret(Name=path, SecretString=json.dumps(data))
    sm.create_secret(Name="rt/plain", SecretString="just a token \u00e9")
    blob = bytes(range(256)) + b"\x00\xff\r\n"
    sm.create_secret(Name="rt/binary", SecretBinary=blob)
    client = agent(env["AGENT_AWS"], "AGENT_AWS")
    for path in CASES:
        upstream = json.loads(sm.get_secret_value(SecretId=path)["SecretString"])
        served(client, path, upstream)
    served(client, "rt/plain", {"value": "just a token \u00e9"})
    body = served(client, "rt/binary", {"binary": base64.b64encode(blob).decode()})
    if body is not None and base64.b64decode(body["fields"]["binary"]) != blob:
        problems.append("rt/binary: bytes differ after base64")

    # Written back through the agent: Secrets Manager holds the same JSON types.
    r = client.put("/v1/secrets/rt/from-agent", json={"fields": {"n": 2, "b": False, "s": "x"}})
    if r.status_code != 200:
        problems.append(f"agent write to AWS: {r.status_code} {r.text[:200]}")
    else:
        got = json.loads(sm.get_secret_value(SecretId="rt/from-agent")["SecretString"])
        if got != {"n": 2, "b": False, "s": "x"}:
            problems.append(f"agent write reached AWS as {got}")


openbao()
aws()
if problems:
    print("\n".join(problems))
    sys.exit(1)
print("round trip: every field, type and version matched")

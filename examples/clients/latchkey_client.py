#!/usr/bin/env python3
"""Fetch a secret from the local latchkey agent over mTLS on its Unix socket.

Standard library only. Usage:
    latchkey_client.py PATH [FIELD]
Environment: LATCHKEY_SOCKET, LATCHKEY_CERT, LATCHKEY_KEY, LATCHKEY_CACERT
(defaults: the files `latchkey init --dir .latchkey` makes, admin certificate).
"""
import http.client
import json
import os
import socket
import ssl
import sys


class UnixHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS over a Unix socket; the TLS name is `localhost`, as the agent's cert says."""

    def __init__(self, socket_path, context):
        super().__init__("localhost", context=context)
        self.socket_path = socket_path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.socket_path)
        self.sock = self._context.wrap_socket(sock, server_hostname="localhost")


def client(directory=".latchkey"):
    env = os.environ.get
    context = ssl.create_default_context(cafile=env("LATCHKEY_CACERT", f"{directory}/ca/ca.pem"))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(
        env("LATCHKEY_CERT", f"{directory}/clients/admin.pem"),
        env("LATCHKEY_KEY", f"{directory}/clients/admin.key"),
    )
    return UnixHTTPSConnection(env("LATCHKEY_SOCKET", f"{directory}/run/latchkey.sock"), context)


def get_secret(path, conn=None):
    conn = conn or client()
    conn.request("GET", f"/v1/secrets/{path}")
    response = conn.getresponse()
    body = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"{response.status} {body['error']['code']}: {body['error']['message']}")
    return body


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    secret = get_secret(sys.argv[1])
    if len(sys.argv) > 2:
        print(secret["fields"][sys.argv[2]])
    else:
        print(json.dumps(secret["fields"], indent=2))


if __name__ == "__main__":
    main()

"""`moto_server` for the end-to-end tests, with AWS's version dates.

moto (5.2.5) answers ListSecretVersionIds with the time of the call as every
version's CreatedDate, where AWS gives the time the version was created. The agent
numbers a version someone else wrote by its creation time, so against plain moto the
same version changes number whenever two calls fall in different seconds: reads,
listings and check-and-set writes then disagree on a busy machine. This corrects
the answer to the date moto keeps for each version, then runs moto's own server.

usage: python3 moto-server.py MOTO_SERVER_ARGS...
"""

import json
import sys

from moto.secretsmanager.models import SecretsManagerBackend
from moto.server import main

_list_secret_version_ids = SecretsManagerBackend.list_secret_version_ids


def list_secret_version_ids(self, secret_id, *args, **kwargs):
    answer = json.loads(_list_secret_version_ids(self, secret_id, *args, **kwargs))
    versions = self.secrets[secret_id].versions
    for listed in answer.get("Versions", []):
        created = versions.get(listed.get("VersionId"), {}).get("createdate")
        if created is not None:
            listed["CreatedDate"] = created
    return json.dumps(answer)


SecretsManagerBackend.list_secret_version_ids = list_secret_version_ids

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

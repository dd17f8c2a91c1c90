"""The embedded store's S3 key pair: made once per data directory, kept in two 0600 files.

SeaweedFS enforces SigV4 once an identity file exists, so a key pair is generated once
(``secrets``) and kept as the identity file weed reads (``-s3.config``) and an AWS
shared-credentials file for the user's own tools. The identity file is the source of truth; the
credentials file is derived from it. A later store on the same directory reuses both.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

IDENTITY_NAME = "chute"
PROFILE = "chute"


class CredentialsError(Exception):
    """The identity file exists but cannot be used."""


def load_or_create(identities_file: Path, credentials_file: Path) -> tuple[str, str]:
    """The identity file is the source of truth; the AWS credentials file is derived."""
    keys = _read_identities(identities_file)
    if keys is None:
        keys = (secrets.token_hex(10).upper(), secrets.token_hex(20))
        identities = {"identities": [{
            "name": IDENTITY_NAME,
            "credentials": [{"accessKey": keys[0], "secretKey": keys[1]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        write_private(identities_file, json.dumps(identities, indent=2) + "\n")
    else:
        os.chmod(identities_file, 0o600)
    credentials = (
        "# Written by chute for its embedded SeaweedFS store; use with\n"
        f"#   AWS_SHARED_CREDENTIALS_FILE={credentials_file} aws --profile {PROFILE}"
        " --endpoint-url http://127.0.0.1:PORT s3 ...\n"
        f"[{PROFILE}]\n"
        f"aws_access_key_id = {keys[0]}\n"
        f"aws_secret_access_key = {keys[1]}\n"
    )
    try:
        current = credentials_file.read_text()
    except FileNotFoundError:
        current = None
    if current != credentials:
        write_private(credentials_file, credentials)
    else:
        os.chmod(credentials_file, 0o600)
    return keys

def _read_identities(identities_file: Path) -> tuple[str, str] | None:
    try:
        document = json.loads(identities_file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CredentialsError(
            f"cannot read the embedded store's identities {identities_file}: {exc}"
        ) from exc
    try:
        for identity in document["identities"]:
            if identity.get("name") == IDENTITY_NAME and identity.get("credentials"):
                first = identity["credentials"][0]
                return str(first["accessKey"]), str(first["secretKey"])
    except (KeyError, TypeError, IndexError, AttributeError):
        pass
    raise CredentialsError(
        f"{identities_file} has no identity named {IDENTITY_NAME!r} with credentials; "
        "fix or delete it"
    )


def write_private(path: Path, text: str) -> None:
    """Write atomically (a crash leaves the old file or the new one) with mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to an existing leftover
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)

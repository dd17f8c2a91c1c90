"""Where credentials, region and endpoint come from: the AWS conventions, via botocore.

botocore resolves the standard chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/
AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws/{credentials,config}, credential_process, SSO,
assume-role, container and instance metadata) and refreshes temporary credentials before they
expire. chute adds one thing: after the store rejects a request as signed with expired or
unknown credentials, :meth:`CredentialSource.reload` resolves the chain again from scratch, so
keys rotated on disk or in a credential_process are picked up mid-upload.

botocore's resolution is blocking (file reads, possibly an STS call), so it runs in a worker
thread; the frozen credentials are cached and the trio thread never blocks on them.
"""

from __future__ import annotations

import os

import botocore.credentials
import botocore.session
import trio

from .errors import ConfigError


def _session(profile: str | None) -> botocore.session.Session:
    try:
        session = botocore.session.Session(profile=profile)
        session.get_scoped_config()  # an unknown profile raises here, not in Session()
        return session
    except botocore.exceptions.ProfileNotFound:
        name = profile or os.environ.get("AWS_PROFILE")
        raise ConfigError(f"AWS profile {name!r} is not in ~/.aws/config or "
                          "~/.aws/credentials") from None


def resolve_region(profile: str | None, explicit: str | None) -> str:
    """--region, else AWS_REGION/AWS_DEFAULT_REGION/profile, else us-east-1."""
    if explicit:
        return explicit
    region = os.environ.get("AWS_REGION") or _session(profile).get_config_variable("region")
    return region or "us-east-1"


def resolve_endpoint(profile: str | None, explicit: str | None) -> str | None:
    """--endpoint-url, else AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's endpoint_url."""
    if explicit:
        return explicit
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(var):
            return os.environ[var]
    config = _session(profile).get_scoped_config()
    s3_section = config.get("s3")
    if isinstance(s3_section, dict) and s3_section.get("endpoint_url"):
        return str(s3_section["endpoint_url"])
    return config.get("endpoint_url")


class CredentialSource:
    """Hands out current frozen credentials; resolves the chain again on demand."""

    def __init__(self, profile: str | None = None) -> None:
        self._profile = profile
        self._credentials: botocore.credentials.Credentials | None = None
        self._frozen: botocore.credentials.ReadOnlyCredentials | None = None
        self._lock = trio.Lock()

    def _resolve(self) -> None:
        credentials = _session(self._profile).get_credentials()
        if credentials is None:
            raise ConfigError(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or ~/.aws/credentials"
            )
        self._credentials = credentials
        self._frozen = credentials.get_frozen_credentials()

    def _refresh_if_needed(self) -> None:
        assert self._credentials is not None
        self._frozen = self._credentials.get_frozen_credentials()

    def load_blocking(self) -> botocore.credentials.ReadOnlyCredentials:
        """Resolve once before trio starts (the mount's preflight)."""
        self._resolve()
        assert self._frozen is not None
        return self._frozen

    async def get(self) -> botocore.credentials.ReadOnlyCredentials:
        """Current credentials; temporary ones are refreshed ahead of expiry in a thread."""
        if self._frozen is None:
            async with self._lock:
                if self._frozen is None:
                    await trio.to_thread.run_sync(self._resolve)
        credentials = self._credentials
        if getattr(credentials, "refresh_needed", None) and credentials.refresh_needed():
            async with self._lock:
                await trio.to_thread.run_sync(self._refresh_if_needed)
        assert self._frozen is not None
        return self._frozen

    async def reload(self) -> None:
        """Resolve the whole chain again: the store said our credentials are stale."""
        async with self._lock:
            await trio.to_thread.run_sync(self._resolve)


class StaticCredentials(CredentialSource):
    """Fixed keys, no AWS chain: for tests and tools that are handed their keys.

    Models a key file the way the chain sees one: :meth:`rotate` changes the keys "on disk",
    :meth:`get` keeps handing out the cached ones until :meth:`reload` (the client calls it
    after a credential error) picks the new ones up. ``reloads`` counts those calls.
    """

    def __init__(self, access_key: str, secret_key: str, token: str | None = None) -> None:
        super().__init__()
        self._on_disk = botocore.credentials.Credentials(access_key, secret_key, token)
        self._credentials = self._on_disk
        self._frozen = self._on_disk.get_frozen_credentials()
        self.reloads = 0

    def rotate(self, access_key: str, secret_key: str, token: str | None = None) -> None:
        """New keys that the next :meth:`reload` picks up."""
        self._on_disk = botocore.credentials.Credentials(access_key, secret_key, token)

    def load_blocking(self) -> botocore.credentials.ReadOnlyCredentials:
        assert self._frozen is not None
        return self._frozen

    async def get(self) -> botocore.credentials.ReadOnlyCredentials:
        assert self._frozen is not None
        return self._frozen

    async def reload(self) -> None:
        self.reloads += 1
        self._credentials = self._on_disk
        self._frozen = self._on_disk.get_frozen_credentials()

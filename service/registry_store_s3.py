"""The adapter registry on object storage (``s3://bucket/prefix``), shared by every gateway.

Objects use the folder registry's layout under ``prefix`` (``service.registry_store``). Why it is
safe for several gateways and publishers at once:

- **Versions are immutable and claimed by a conditional write.** ``add_version`` writes the config,
  the weights and then the manifest, each with ``If-None-Match: *``: whoever writes the config first
  owns the version, a concurrent publish of the same number gets 412 and ``VersionExists``. A version
  without its manifest (a publisher that died) is not there for readers; its number stays taken.
- **Aliases are one object updated by compare-and-swap**: read it with its ETag, apply the change,
  write it back with ``If-Match: <etag>`` (``If-None-Match: *`` when there is none yet); on 412 read
  again and re-apply. Two gateways that promote at once both land, in some order.
- **Readers see a promote within ``alias_ttl``** (1 s by default): ``aliases()`` answers from memory
  for that long, then asks again with ``If-None-Match: <etag>`` (a 304 without a body when nothing
  changed). A gateway sees its own promotes at once. While the store cannot be reached, the last
  aliases read keep serving, and a warning is logged.
- **Engines load from local disk**: ``folder`` syncs a version into ``cache_dir/<name>/<version>/``
  once (download into a temporary folder, check every file's sha256 against the manifest, rename),
  and never again: versions do not change.

Credentials and region come from boto3's standard chain (``AWS_ACCESS_KEY_ID``/``AWS_PROFILE``,
``~/.aws``, instance or pod roles); ``endpoint_url`` names an S3-compatible server (MinIO, Ceph, moto).
The S3 API must honour conditional writes (AWS S3 does since 2024, as do MinIO and moto).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from .registry_store import (
    ALIASES,
    CONFIG,
    MANIFEST,
    WEIGHTS,
    AdapterRejected,
    AliasChange,
    Aliases,
    RegistryUnavailable,
    VersionExists,
)

log = logging.getLogger("loragate.registry")
ALIAS_TTL = 1.0  # seconds a gateway answers alias look-ups from memory before it asks again
_CAS_ATTEMPTS = 50
_CONFLICT = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_URL = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix/"); the prefix may be empty."""
    match = _URL.match(url)
    if match is None:
        raise ValueError(f"{url!r} is not an s3://bucket[/prefix] URL")
    prefix = (match["prefix"] or "").strip("/")
    return match["bucket"], f"{prefix}/" if prefix else ""


def _code(exc: Exception) -> str:
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Store:
    def __init__(
        self,
        url: str,
        cache_dir: Path,
        *,
        endpoint_url: str | None = None,
        alias_ttl: float = ALIAS_TTL,
        client: Any = None,
    ):
        self.bucket, self.prefix = parse_s3_url(url)
        self.location = url.rstrip("/")
        self.root = cache_dir
        self.alias_ttl = alias_ttl
        self.client = client or _client(endpoint_url)
        self._manifests: dict[tuple[str, int], str] = {}  # published manifests never change
        self._synced: set[tuple[str, int]] = set()
        self._sync_locks: dict[tuple[str, int], threading.Lock] = {}
        self._lock = threading.Lock()  # guards the dicts above and the alias cache
        self._alias_lock = threading.Lock()  # one alias read at a time; the others then find it fresh
        self._aliases: Aliases | None = None
        self._etag: str | None = None
        self._fetched = float("-inf")

    # -- calls, with the storage's failures turned into the registry's errors -------------------------
    def _call(self, operation: str, what: str, **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **params)
        except ClientError as exc:
            if _code(exc) in _MISSING | _CONFLICT | {"304"}:
                raise
            raise RegistryUnavailable(f"{self.location}: {what} failed: {exc}") from exc
        except BotoCoreError as exc:  # no credentials, no connection, a timeout
            raise RegistryUnavailable(f"{self.location}: {what} failed: {exc}") from exc

    def _key(self, *parts: object) -> str:
        return self.prefix + "/".join(str(p) for p in parts)

    def _children(self, *parts: object) -> list[str]:
        """The "folder" names right under ``parts``."""
        prefix = self._key(*parts) + "/"
        found: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self._call("list_objects_v2", f"listing {prefix}", Prefix=prefix, Delimiter="/", **token)
            found += [p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
            if not page.get("IsTruncated"):
                return found
            token = {"ContinuationToken": page["NextContinuationToken"]}

    # -- adapters -------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._children("adapters"))

    def version_numbers(self, name: str) -> list[int]:
        return sorted(int(v) for v in self._children("adapters", name) if v.isdigit())

    def manifest(self, name: str, version: int) -> str | None:
        known = self._manifests.get((name, version))
        if known is not None:
            return known
        try:
            body = self._call("get_object", f"reading {name}@{version}'s manifest",
                              Key=self._key("adapters", name, version, MANIFEST))["Body"].read()  # fmt: skip
        except Exception as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        text: str = body.decode()
        self._manifests[(name, version)] = text
        return text

    def add_version(self, name: str, version: int, source: Path, manifest: str) -> Path:
        for file in (CONFIG, WEIGHTS, MANIFEST):  # the config first: it claims the version
            key = self._key("adapters", name, version, file)
            try:
                if file == MANIFEST:
                    self._call(
                        "put_object", f"writing {key}", Key=key, Body=manifest.encode(), IfNoneMatch="*"
                    )
                else:
                    with (source / file).open("rb") as body:
                        self._call("put_object", f"writing {key}", Key=key, Body=body, IfNoneMatch="*")
            except Exception as exc:
                if _code(exc) in _CONFLICT:
                    raise VersionExists(f"{name}@{version} already exists; versions are immutable") from None
                raise
        self._manifests[(name, version)] = manifest
        return self._install(name, version, source, manifest)

    def _install(self, name: str, version: int, source: Path, manifest: str) -> Path:
        """A version just published from this host goes into the cache from its source, not downloaded."""
        target = self._cached(name, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{version}.{uuid.uuid4().hex[:8]}.partial")
        tmp.mkdir()
        try:
            for file in (CONFIG, WEIGHTS):
                shutil.copyfile(source / file, tmp / file)
            (tmp / MANIFEST).write_text(manifest)
            tmp.rename(target)
        except OSError:  # already there (another process synced it): the same immutable files
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _cached(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def is_local(self, name: str, version: int) -> bool:
        return (name, version) in self._synced or (self._cached(name, version) / MANIFEST).is_file()

    def folder(self, name: str, version: int) -> Path:
        """The version's files in the local cache, downloaded and checked on first use only."""
        key = (name, version)
        target = self._cached(name, version)
        if key in self._synced:
            return target
        with self._lock:
            lock = self._sync_locks.setdefault(key, threading.Lock())
        with lock:  # concurrent first uses: one download
            if not (target / MANIFEST).is_file():  # another process may have synced it already
                self._download(name, version, target)
            self._synced.add(key)
        return target

    def _download(self, name: str, version: int, target: Path) -> None:
        ref = f"{name}@{version}"
        manifest = self.manifest(name, version)
        if manifest is None:
            raise AdapterRejected(f"no adapter {ref} in the registry {self.location}")
        try:
            facts = json.loads(manifest)
            expected: dict[str, str] = dict(facts.get("files") or {WEIGHTS: facts["sha256"]})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AdapterRejected(f"{ref}: its manifest in {self.location} cannot be read ({exc})") from None
        started = time.perf_counter()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{version}.{uuid.uuid4().hex[:8]}.partial")
        tmp.mkdir()
        try:
            size = 0
            for file in (CONFIG, WEIGHTS):
                digest, written = self._fetch(self._key("adapters", name, version, file), tmp / file, ref)
                size += written
                if file in expected and digest != expected[file]:
                    raise AdapterRejected(
                        f"{ref}: {file} in {self.location} does not match the manifest's sha256"
                        " (corrupted or replaced in storage); not synced"
                    )
            (tmp / MANIFEST).write_text(manifest)
            try:
                tmp.rename(target)
            except OSError:  # another process on this host synced it first: same immutable files
                if not (target / MANIFEST).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("registry: synced %s (%d bytes) into %s in %.2f s",
                 ref, size, target, time.perf_counter() - started)  # fmt: skip

    def _fetch(self, key: str, path: Path, ref: str) -> tuple[str, int]:
        """Stream one object to ``path``; its sha256 and size."""
        try:
            body = self._call("get_object", f"downloading {key}", Key=key)["Body"]
        except Exception as exc:
            if _code(exc) in _MISSING:
                raise AdapterRejected(f"{ref}: {key} is missing from {self.location}; not synced") from None
            raise
        digest, size = hashlib.sha256(), 0
        with path.open("wb") as out:
            for block in iter(lambda: body.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
                size += len(block)
        return digest.hexdigest(), size

    # -- aliases --------------------------------------------------------------------------------------
    def aliases_are_fresh(self) -> bool:
        return self._aliases is not None and time.monotonic() - self._fetched < self.alias_ttl

    def aliases(self) -> Aliases:
        cached = self._aliases
        if cached is not None and time.monotonic() - self._fetched < self.alias_ttl:
            return cached
        with self._alias_lock:
            if self._aliases is not None and time.monotonic() - self._fetched < self.alias_ttl:
                return self._aliases
            try:
                self._refresh()
            except RegistryUnavailable as exc:
                if self._aliases is None:
                    raise
                log.warning("registry: serving the aliases read %.0f s ago: %s",
                            time.monotonic() - self._fetched, exc.message)  # fmt: skip
                self._fetched = time.monotonic()  # ask again after alias_ttl, not on every request
            assert self._aliases is not None
            return self._aliases

    def _refresh(self) -> None:
        """Read the aliases again: a 304 when the ETag is unchanged, so the body is not sent again."""
        conditional = {"IfNoneMatch": self._etag} if self._etag and self._aliases is not None else {}
        try:
            answer = self._call("get_object", "reading the aliases", Key=self._key(ALIASES), **conditional)
        except Exception as exc:
            code = _code(exc)
            if code == "304":
                self._fetched = time.monotonic()
                return
            if code not in _MISSING:
                raise
            self._remember({}, None)
            return
        self._remember(self._parse(answer["Body"].read()), answer["ETag"])

    def _parse(self, body: bytes) -> Aliases:
        try:
            aliases: Aliases = json.loads(body)["aliases"]
        except (ValueError, KeyError, TypeError) as exc:
            raise AdapterRejected(f"{self.location}/{ALIASES} cannot be read: {exc}") from None
        return aliases

    def _remember(self, aliases: Aliases, etag: str | None) -> None:
        self._aliases, self._etag, self._fetched = aliases, etag, time.monotonic()

    def update_aliases(self, change: AliasChange) -> Aliases:
        key = self._key(ALIASES)
        for attempt in range(_CAS_ATTEMPTS):
            try:
                answer = self._call("get_object", "reading the aliases", Key=key)
                current, etag = self._parse(answer["Body"].read()), answer["ETag"]
            except Exception as exc:
                if _code(exc) not in _MISSING:
                    raise
                current, etag = {}, None
            updated = change(copy.deepcopy(current))
            if updated == current:
                self._remember(current, etag)
                return current
            body = json.dumps({"aliases": updated}, indent=2, sort_keys=True).encode()
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                written = self._call("put_object", "writing the aliases", Key=key, Body=body, **condition)
            except Exception as exc:
                if _code(exc) not in _CONFLICT:
                    raise
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))  # another writer won: again
                continue
            self._remember(updated, written["ETag"])
            return updated
        raise RegistryUnavailable(
            f"{self.location}/{ALIASES} kept changing: gave up after {_CAS_ATTEMPTS} tries"
        )


def _client(endpoint_url: str | None) -> Any:
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    config = Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)

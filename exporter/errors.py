"""The exception tree of the ``exporter`` package (object stores, deltas, the consumer SDK).

::

    ExporterError (FluxrecError)        root
    ├── StoreError                      an object store request failed
    │   ├── ObjectNotFound (KeyError)   the key does not exist
    │   ├── StoreUnavailable            transient failures outlasted the retries
    │   ├── BadKey (ValueError)         a key that could escape its prefix
    │   └── UnsafeObject                file://: a symlink, FIFO, device or directory
    ├── FormatError (ValueError)        a payload object or manifest is not valid (FORMAT.md)
    │   ├── BadMagic                    not a fluxrec delta object
    │   ├── UnsupportedVersion          a format version this reader does not know
    │   ├── OversizedHeader             header length beyond MAX_HEADER_BYTES
    │   ├── OversizedPayload            declared sizes beyond the reader's limits
    │   ├── Truncated                   fewer (or more) bytes than the framing declares
    │   ├── ChecksumMismatch            sha256 of the bytes differs from trailer/manifest
    │   ├── BadHeader                   header JSON invalid or inconsistent with the body
    │   ├── BadBody                     LZ4 frame or Arrow stream breaks FORMAT.md
    │   ├── BadManifest                 manifest JSON invalid or inconsistent
    │   └── BadSignature                HMAC signature missing or wrong
    ├── ChainError                      versions do not form a valid chain
    │   ├── BadSequence                 a version's sequence/parent does not follow ours
    │   ├── MissingPayload              a manifest names an object that does not exist
    │   └── VersionNotFound (KeyError)  no manifest for the requested version
    └── GateRefused                     the safety gate refused to publish a cut

A consumer that meets any ``ExporterError`` keeps serving its last good version and counts
the rejection with its class name (``DeltaConsumer.stats.rejected`` and ``.reasons``).
"""

from __future__ import annotations

from fluxrec.errors import FluxrecError

__all__ = [
    "BadBody",
    "BadHeader",
    "BadKey",
    "BadMagic",
    "BadManifest",
    "BadSequence",
    "BadSignature",
    "ChainError",
    "ChecksumMismatch",
    "ExporterError",
    "FormatError",
    "GateRefused",
    "MissingPayload",
    "ObjectNotFound",
    "OversizedHeader",
    "OversizedPayload",
    "StoreError",
    "StoreUnavailable",
    "Truncated",
    "UnsafeObject",
    "UnsupportedVersion",
    "VersionNotFound",
]


class ExporterError(FluxrecError):
    """Root of every error raised by the ``exporter`` package."""


class StoreError(ExporterError):
    """An object store request failed."""


class ObjectNotFound(StoreError, KeyError):
    """The object does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "object not found"


class StoreUnavailable(StoreError):
    """The store kept failing with transient errors after all retries."""


class BadKey(StoreError, ValueError):
    """A key that is empty, absolute, or contains '..' or backslashes."""


class UnsafeObject(StoreError):
    """A ``file://`` key that is a symlink or not a regular file: refused, never read."""


class FormatError(ExporterError, ValueError):
    """A payload object or a manifest does not follow ``exporter/FORMAT.md``."""


class BadMagic(FormatError):
    """The object does not start with the fluxrec magic bytes."""


class UnsupportedVersion(FormatError):
    """The object or manifest declares a format version this reader does not support."""


class OversizedHeader(FormatError):
    """The declared header length exceeds ``MAX_HEADER_BYTES``."""


class OversizedPayload(FormatError):
    """Declared body / decompressed sizes exceed the reader's limits."""


class Truncated(FormatError):
    """The object has fewer (or more) bytes than its framing declares."""


class ChecksumMismatch(FormatError):
    """The sha256 of the bytes does not match the trailer or the manifest."""


class BadHeader(FormatError):
    """The header JSON is invalid or does not match the Arrow body."""


class BadBody(FormatError):
    """The LZ4 frame or the Arrow IPC stream of the body breaks FORMAT.md: framing,
    trailing bytes, body compression, schema, nulls, NaN/Inf, row counts."""


class BadManifest(FormatError):
    """The manifest is not valid JSON or breaks a rule of FORMAT.md."""


class BadSignature(FormatError):
    """The manifest's HMAC-SHA256 signature is missing or does not verify."""


class ChainError(ExporterError):
    """Versions do not form a valid chain."""


class BadSequence(ChainError):
    """A version's sequence or parent does not follow the consumer's current version."""


class MissingPayload(ChainError):
    """A manifest names a payload object that is not in the store."""


class VersionNotFound(ChainError, KeyError):
    """No manifest exists for the requested version."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "version not found"


class GateRefused(ExporterError):
    """The safety gate refused a cut (NaN/Inf or a parameter-norm jump); says why."""

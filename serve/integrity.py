"""Is an export what was exported? Reading the manifest, its integrity block and signature, and
the checks every manifest field the runtime reads must pass (standard library only).

The integrity block holds a SHA-256 of each manifest section and of the ONNX bytes, and over
them either a plain SHA-256 (an unsigned export) or an HMAC-SHA256 under the signing key
(a signed export). What that protects, and what it cannot:

* The digest of an **unsigned** export proves only that its files agree with each other, not
  who wrote them: anyone who can write the folder can relax its caps, quiet hours and consent
  rules, or switch review off, and recompute every hash. The runtime therefore loads an
  unsigned export only with a loud :class:`UnsignedExportWarning`, and refuses it where a
  signature is required (``PolicyRuntime.load(require_signature=True)``, which ``serve.http``
  asks for by default).
* A signed export records ``"signing": {"signed": true, "key_id": ...}`` among its hashed
  sections, so one that arrives with its signature stripped is refused whether or not the
  runtime holds the key. That stops a careless strip only: whoever strips the signature can
  also delete the ``signing`` section and recompute the hashes, and the result cannot be told
  from an export made without a key. Only a runtime that requires a signature (and holds the
  key) is protected from that; every other runtime says so in the warning.
* ``key_id`` (16 hex digits) is an HMAC of a fixed label under the key: it names which key
  signed an export without revealing the key, so a mismatch can say which key was used.

Parsing fails closed as well: a manifest larger than :data:`MAX_MANIFEST_BYTES`, nested deeper
than :data:`MAX_DEPTH`, with a repeated key, NaN or infinity, or any field of the wrong shape is
an :class:`ExportError` naming the field, never a ``KeyError``/``TypeError`` from deeper down.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from serve import contract

FORMAT_VERSION = 3
"""manifest format this runtime reads (3: consent tiers per feature and an integrity block)"""
KEY_ENV = "CADENCE_EXPORT_KEY"
"""environment variable holding the signing key (export signs, the runtime then requires it)"""
MAX_MANIFEST_BYTES = 1 << 20
"""largest manifest read (1 MiB; an export's manifest is about 10 kB)"""
MAX_DEPTH = 16
"""deepest nesting of lists and objects a manifest may have (an export's is 4)"""
KEY_ID_LABEL = b"cadence export key id"
"""what the key id is an HMAC of"""

REQUIRED = (
    "feature_names",
    "feature_low",
    "feature_high",
    "feature_min_tier",
    "nvec",
    "action_labels",
    "mask_rules",
    "review_rules",
    "score_rule",
    "onnx_sha256",
    "integrity",
)
"""manifest sections every export must have"""

RISK = (
    "anyone who can write its folder can relax its caps, quiet hours and consent rules (or "
    "switch review off) and recompute its hashes"
)


class ExportError(ValueError):
    """The export on disk cannot be trusted (tampered, incomplete, or of another format)."""


class UnsignedExportWarning(UserWarning):
    """An export without a signature was loaded: its rules are only as safe as its folder."""


def canonical(value: Any) -> bytes:
    """The JSON bytes a manifest section is hashed over (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def integrity_block(manifest: dict[str, Any], onnx: bytes, key: bytes | None) -> dict[str, Any]:
    """Hashes of every manifest section and of the ONNX bytes, and their digest (an HMAC-SHA256
    under ``key`` when one is given, else a plain SHA-256)."""
    sections = {k: hashlib.sha256(canonical(v)).hexdigest() for k, v in sorted(manifest.items())}
    sections["policy.onnx"] = hashlib.sha256(onnx).hexdigest()
    body = canonical(sections)
    if key:
        return {"sections": sections, "hmac_sha256": hmac.new(key, body, "sha256").hexdigest()}
    return {"sections": sections, "sha256": hashlib.sha256(body).hexdigest()}


def signing_key(key: str | bytes | None = None) -> bytes | None:
    """``key`` if given, else $CADENCE_EXPORT_KEY, else None (hashed, not signed)."""
    key = key if key is not None else os.environ.get(KEY_ENV)
    if not key:
        return None
    return key.encode() if isinstance(key, str) else key


def key_id(key: bytes) -> str:
    """16 hex digits naming ``key`` without revealing it."""
    return hmac.new(key, KEY_ID_LABEL, "sha256").hexdigest()[:16]


def signing_section(key: bytes | None) -> dict[str, Any]:
    """The manifest's ``signing`` section: whether the export is signed, and by which key."""
    return {"signed": key is not None, "key_id": None if key is None else key_id(key)}


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path`` as a JSON object of the format this runtime reads, or
    :class:`ExportError` saying what is wrong with the file (size, JSON, nesting, version)."""
    with open(path, "rb") as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ExportError(
            f"{path} is over {MAX_MANIFEST_BYTES:,} bytes; an export's manifest is about 10 kB"
        )
    try:
        manifest = json.loads(
            raw,
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int limits
        raise ExportError(f"{path} is not valid JSON: {_short(exc, 200)}") from exc
    if not isinstance(manifest, dict):
        raise ExportError(f"{path} is not a JSON object")
    if _depth(manifest) > MAX_DEPTH:
        raise ExportError(f"{path} nests lists and objects more than {MAX_DEPTH} levels deep")
    version = manifest.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ExportError(
            f"{path} has format_version {_short(version)}; this runtime reads "
            f"{FORMAT_VERSION} (export the run again: python export.py run_id=<id>)"
        )
    return manifest


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"key {_short(k)} appears twice in one object")
        seen[k] = v
    return seen


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is beyond the float range")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), stopping past :data:`MAX_DEPTH`."""
    deepest, stack = 0, [(value, 0)]
    while stack and deepest <= MAX_DEPTH:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth + 1)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a hostile manifest can hold megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def verify_manifest(
    manifest: dict[str, Any], onnx: bytes, key: bytes | None, where: Path | str = "manifest"
) -> None:
    """Raise :class:`ExportError` unless ``manifest`` and ``onnx`` are exactly what was exported
    (every section's hash, the ONNX hash, the digest or signature over them; a manifest that
    says it was signed carries a signature) and the manifest keeps the contract (fixed fields
    equal, rules complete and in range, review rules naming known tones, goals and contents)."""
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ExportError(f"{where} lacks {missing}")
    block = manifest["integrity"]
    if not isinstance(block, dict) or not isinstance(block.get("sections"), dict):
        raise ExportError(f"{where}: the integrity block is malformed")
    recorded: dict[str, Any] = block["sections"]
    body = {k: v for k, v in manifest.items() if k != "integrity"}
    try:
        fresh = integrity_block(body, onnx, None)["sections"]
    except ValueError as exc:  # NaN or infinity in a section
        raise ExportError(f"{where} holds a value JSON cannot carry: {exc}") from exc
    if not fresh["policy.onnx"] == recorded.get("policy.onnx") == manifest["onnx_sha256"]:
        raise ExportError(
            f"{where}: policy.onnx has SHA-256 {fresh['policy.onnx']}, but the manifest says "
            f"{_short(recorded.get('policy.onnx'))}: the file was changed after export; "
            "refusing to load it"
        )
    dropped = sorted(set(recorded) - set(fresh))
    added = sorted(set(fresh) - set(recorded))
    changed = sorted(k for k in set(fresh) & set(recorded) if fresh[k] != recorded[k])
    if dropped or added or changed:
        parts = [
            *(f"section {_short(k)} was removed" for k in dropped),
            *(f"section {_short(k)} was added" for k in added),
            *(f"section {_short(k)} differs from what was exported" for k in changed),
        ]
        raise ExportError(f"{where} was edited after export: {'; '.join(parts[:5])}")
    _verify_digest(manifest, block, key, where)
    for field, expected in contract.CONTRACT_FIELDS.items():
        if manifest[field] != expected:
            raise ExportError(f"{where}: {field} {_first_difference(manifest[field], expected)}")
    problems = contract.rule_problems(manifest["mask_rules"])
    problems += contract.review_problems(manifest["review_rules"])
    if problems:
        raise ExportError(f"{where}: {'; '.join(problems)}")
    if manifest["score_rule"] not in ("log_probs", "additive"):
        raise ExportError(f"{where}: unknown score_rule {_short(manifest['score_rule'])}")


def _verify_digest(
    manifest: dict[str, Any], block: dict[str, Any], key: bytes | None, where: Path | str
) -> None:
    """The digest (no key) or signature (a key) over the section hashes, and that a manifest
    whose ``signing`` section says it was signed still carries its signature."""
    signing = _signing(manifest, where)
    signed_by = signing["key_id"] if signing and signing["signed"] else None
    if signed_by is not None and "hmac_sha256" not in block:
        raise ExportError(
            f"{where} says it was signed (key id {signed_by}) but carries no signature: it was "
            "stripped after export; refusing to load it"
        )
    digest_body = canonical(block["sections"])
    if key is not None:
        expected = hmac.new(key, digest_body, "sha256").hexdigest()
        if not hmac.compare_digest(str(block.get("hmac_sha256", "")), expected):
            which = (
                f"signed with key id {signed_by}, the key given has id {key_id(key)}"
                if signed_by is not None and signed_by != key_id(key)
                else "unsigned, signed with another key, or edited"
            )
            raise ExportError(
                f"{where}: the signature does not match the signing key (${KEY_ENV}): {which}"
            )
    elif block.get("sha256") != hashlib.sha256(digest_body).hexdigest():
        raise ExportError(
            f"{where}: "
            + (
                f"the export is signed; set ${KEY_ENV} (or pass key=) to verify it"
                if "hmac_sha256" in block
                else "the integrity digest does not match its section hashes"
            )
        )


def _signing(manifest: dict[str, Any], where: Path | str) -> dict[str, Any] | None:
    """The manifest's ``signing`` section, checked (None for an export made before it existed)."""
    if "signing" not in manifest:
        return None
    signing = manifest["signing"]
    ok = (
        isinstance(signing, dict)
        and set(signing) == {"signed", "key_id"}
        and isinstance(signing["signed"], bool)
        and (
            isinstance(signing["key_id"], str) and len(signing["key_id"]) == 16
            if signing["signed"]
            else signing["key_id"] is None
        )
    )
    if not ok:
        raise ExportError(
            f'{where}: signing must be {{"signed": true, "key_id": <16 hex digits>}} or '
            f'{{"signed": false, "key_id": null}}, got {_short(signing)}'
        )
    return signing


def check_signed(manifest: dict[str, Any], where: Path | str, require: bool) -> None:
    """Refuse (``require``) or warn loudly about a verified export that carries no signature."""
    if "hmac_sha256" in manifest["integrity"]:
        return
    if require:
        raise ExportError(
            f"{where} carries no signature and a signed export is required: {RISK}. Export "
            f"with ${KEY_ENV} set and serve with the same key (or allow unsigned exports "
            "explicitly)"
        )
    warnings.warn(
        f"{where} is unsigned: {RISK}. Sign exports (${KEY_ENV}) and require the signature "
        "when serving",
        UnsignedExportWarning,
        stacklevel=3,
    )


def _first_difference(got: Any, expected: Any) -> str:
    """Where ``got`` first departs from the contract's ``expected``, in words."""
    if isinstance(got, list) and isinstance(expected, list):
        if len(got) != len(expected):
            return f"has {len(got)} entries; the contract has {len(expected)}"
        i = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
        return (
            f"differs from the contract at position {i}: {_short(got[i])} where "
            f"{expected[i]!r} is expected"
        )
    return f"differs from the contract: {_short(got)} where {expected!r} is expected"

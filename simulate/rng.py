"""Counter-based randomness: one stream per (seed, client, day, draw name).

A uniform draw is a pure function of its key, so a client's luck does not depend on the
batch it is simulated in, on sharding, or on which other clients exist; two policies run
with one seed face the same clients and the same luck (common random numbers).

The hash is the 64-bit finaliser of MurmurHash3 applied to a key built from the four
counters. :func:`uniform_scalar` is the plain-integer twin used by the reference model.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S33 = np.uint64(33)
_S11 = np.uint64(11)
_TO_UNIT = 2.0**-53
_MASK64 = (1 << 64) - 1

TRAIT_DAY = -1
"""the day counter used for draws that make a client's fixed traits"""


def _fmix(x: np.ndarray) -> np.ndarray:
    """MurmurHash3 fmix64 in place on a uint64 array; returns the same array."""
    x ^= x >> _S33
    x *= _M1
    x ^= x >> _S33
    x *= _M2
    x ^= x >> _S33
    return x


def _fmix_int(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _MASK64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _MASK64
    x ^= x >> 33
    return x


def client_keys(seed: int, client_ids: np.ndarray) -> np.ndarray:
    """The day-independent half of :func:`day_keys`, to compute once per client."""
    seed_key = np.uint64(_fmix_int((seed & _MASK64) ^ 0x5BD1E995))
    with np.errstate(over="ignore"):
        x = client_ids.astype(np.uint64) * _GOLDEN
        x ^= seed_key
        return _fmix(x)


def keys_on(client_key: np.ndarray, day: int) -> np.ndarray:
    """:func:`day_keys` from the clients' :func:`client_keys` (the same values, one hash less)."""
    day_term = np.uint64(((day & _MASK64) * 0xD6E8FEB86659FD93) & _MASK64)
    with np.errstate(over="ignore"):
        return _fmix(client_key ^ day_term)


def day_keys(seed: int, client_ids: np.ndarray, day: int) -> np.ndarray:
    """Per-client keys for one day: uint64 array of the shape of ``client_ids``.

    Args:
        seed: experiment seed (any int; reduced mod 2**64).
        client_ids: uint64 ids of the clients (unique within a seed).
        day: calendar day (int; :data:`TRAIT_DAY` for trait draws).
    """
    seed_key = np.uint64(_fmix_int((seed & _MASK64) ^ 0x5BD1E995))
    day_term = np.uint64(((day & _MASK64) * 0xD6E8FEB86659FD93) & _MASK64)
    with np.errstate(over="ignore"):
        x = client_ids.astype(np.uint64) * _GOLDEN
        x ^= seed_key
        _fmix(x)
        x ^= day_term
        return _fmix(x)


def _unit(x: np.ndarray) -> np.ndarray:
    """Mixed uint64 words ``x`` (shifted in place) as float64 draws in the open interval (0, 1)."""
    x >>= _S11
    out = x.astype(np.float64)
    out += 0.5
    out *= _TO_UNIT
    return out


def uniform(keys: np.ndarray, stream: int) -> np.ndarray:
    """Uniform draws in the open interval (0, 1), one per key, for draw name ``stream``."""
    with np.errstate(over="ignore"):
        x = keys ^ np.uint64((stream * 0xA0761D6478BD642F) & _MASK64)
        _fmix(x)
    return _unit(x)


def stream_terms(streams: tuple[int, ...] | list[int]) -> np.ndarray:
    """(S, 1) uint64 terms of draw names ``streams`` for :func:`uniform_streams` (to make once)."""
    return np.array(
        [[(stream * 0xA0761D6478BD642F) & _MASK64] for stream in streams], dtype=np.uint64
    )


def uniform_streams(keys: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """(S, N) uniform draws: row i is :func:`uniform` ``(keys, streams[i])`` for the (N,)
    ``keys`` and :func:`stream_terms` ``(streams)``, the same values in one pass."""
    x = keys[None, :] ^ terms
    with np.errstate(over="ignore"):
        _fmix(x)
    return _unit(x)


def uniform_scalar(seed: int, client_id: int, day: int, stream: int) -> float:
    """The same draw as :func:`day_keys` + :func:`uniform`, for one client, in plain ints."""
    seed_key = _fmix_int((seed & _MASK64) ^ 0x5BD1E995)
    x = ((client_id * 0x9E3779B97F4A7C15) & _MASK64) ^ seed_key
    x = _fmix_int(x)
    x ^= ((day & _MASK64) * 0xD6E8FEB86659FD93) & _MASK64
    x = _fmix_int(x)
    x = _fmix_int(x ^ ((stream * 0xA0761D6478BD642F) & _MASK64))
    return ((x >> 11) + 0.5) * _TO_UNIT

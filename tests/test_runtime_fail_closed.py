"""The runtime fails closed on what comes in from disk and from callers: unsigned exports are
refused on request and loudly flagged otherwise, a signature cannot be stripped unnoticed, any
edit of the manifest's JSON is an ExportError (never a crash of another kind), features are
numbers and never strings or booleans, any logits (infinite or NaN) give an allowed action with
a finite probability, and export folders are readable by a server running as another account."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from agents.bandits import LinearBandit
from serve.export import export_policy
from serve.runtime import ExportError, PolicyRuntime


@pytest.fixture(scope="module")
def bandit() -> LinearBandit:
    """A linear bandit with a fixed random model: exported in about a second, no training."""
    policy = LinearBandit(seed=0)
    policy.theta = np.random.default_rng(0).normal(0, 0.5, policy.theta.shape)
    return policy


@pytest.fixture(scope="module")
def unsigned(bandit, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("unsigned") / "export"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_policy(bandit, folder, key=None)
    return folder


@pytest.fixture(scope="module")
def signed(bandit, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("signed") / "export"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_policy(bandit, folder, key="s3cret")
    return folder


# ----- signatures --------------------------------------------------------------------------------
def test_require_signature_refuses_an_unsigned_export_naming_the_risk(unsigned, signed):
    with pytest.raises(ExportError, match="no signature.*relax its caps, quiet hours"):
        PolicyRuntime.load(unsigned, require_signature=True)
    PolicyRuntime.load(signed, key="s3cret", require_signature=True)

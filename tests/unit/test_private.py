"""Folders the daemon creates for its secrets are 0700 whatever the umask; folders that exist are left alone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from studio_watch.private import private_dir
from studio_watch.studio.tokenstore import StoredTokens, TokenStore


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_every_folder_made_is_0700_under_umask_000_and_existing_ones_keep_their_mode(tmp_path: Path,
                                                                                    umask_000: None) -> None:
    existing = tmp_path / "srv"
    existing.mkdir(mode=0o755)
    private_dir(existing / "a" / "b")
    assert [oct((existing / p).stat().st_mode & 0o777) for p in ("a", "a/b")] == ["0o700", "0o700"]
    assert existing.stat().st_mode & 0o777 == 0o755


def test_the_token_store_folder_is_0700_under_umask_000(tmp_path: Path, umask_000: None) -> None:
    store = TokenStore(tmp_path / "state" / "oauth" / "tokens.json", tmp_path / "config.yaml")
    store.save(StoredTokens(access_token="a" * 20, refresh_token="r" * 20, expires_at=1e10, obtained_at=0.0,
                            refreshed_at=None, client_id="c"))
    for folder in ("state", "state/oauth"):
        assert (tmp_path / folder).stat().st_mode & 0o777 == 0o700, folder
    assert store.path.stat().st_mode & 0o777 == 0o600

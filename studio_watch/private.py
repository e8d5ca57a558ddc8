"""Folders studio-watch creates for itself (the state database's, the token store's): owner-only, whatever
the umask. They hold signed upload URLs and tokens; a umask of 000 must not make them world-readable."""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> None:
    """Create `path` and every missing parent with mode 0700 (chmod after mkdir: the umask only ever takes
    bits away, and may take the owner's). Folders that already exist are left as their owner set them."""
    missing: list[Path] = []
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            break
        missing.append(candidate)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # made by someone else meanwhile: theirs, not ours to change
        os.chmod(folder, 0o700)

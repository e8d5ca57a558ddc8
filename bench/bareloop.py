"""The per-file overhead baseline: `python -m bench.bareloop URL FOLDER [TOKEN]`.

One keep-alive httpx.Client, and for each file in FOLDER (sorted): POST generate, PUT the open file (so httpx
sends a Content-Length), POST complete. Sequential, no queue, no durability, no settle: the floor any uploader
making the same three calls per file stands on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

API = "/api/public/v1"


def upload_one(client: httpx.Client, url: str, auth: dict[str, str], path: Path) -> None:
    """generate → PUT → complete for one file."""
    response = client.post(f"{url}{API}/media/uploads", params={"collection_id": 1}, headers=auth)
    response.raise_for_status()
    upload = response.json()["upload"]
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        client.put(upload["url"], content=f, headers={"Content-Length": str(size)}).raise_for_status()
    client.post(f"{url}{API}/media/uploads/{upload['id']}/complete",
                params={"title": path.stem, "description": "", "auto_caption": "false"},
                headers=auth).raise_for_status()


def main(argv: list[str]) -> int:
    url, folder = argv[0], Path(argv[1])
    auth = {"Authorization": f"Bearer {argv[2] if len(argv) > 2 else 'bench-token'}"}
    with httpx.Client(timeout=60, trust_env=False) as client:
        for path in sorted(folder.iterdir()):
            upload_one(client, url, auth, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

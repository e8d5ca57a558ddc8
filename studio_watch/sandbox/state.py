"""The sandbox's state (stdlib only): `SandboxState` builds its parts once, around one journal whose lock and
change signal they all share, and is the one object the HTTP layer (`handler.py`), the route table
(`routes.py`) and `Sandbox` (`server.py`) hold.

- `journal`: what was seen (requests, violations, sandbox errors), the lock, `wait_for` (`journal.py`);
- `injector`: the live faults and their seeded dice (`faults.py`);
- `media`: media, upload URLs, users and collections (`media.py`);
- `oauth`: bearer tokens and the OAuth codes and tokens (`oauth.py`).
"""

from __future__ import annotations

import json
from typing import Iterable, Mapping

from studio_watch.sandbox.faults import Faults, Injector
from studio_watch.sandbox.journal import Journal
from studio_watch.sandbox.media import MediaStore
from studio_watch.sandbox.oauth import OAuth


class SandboxState:
    """Everything the sandbox knows, in four parts that share the journal's lock."""

    def __init__(
        self,
        faults: Faults,
        tokens: Iterable[str],
        collections: Mapping[int, str],
        users: Mapping[int, str],
        oauth_clients: Mapping[str, str],
    ) -> None:
        """Start empty with the given faults, static bearer tokens, collections, users and OAuth clients."""
        self.journal = Journal()
        self.injector = Injector(faults)
        self.media = MediaStore(self.journal, self.injector, collections, users)
        self.oauth = OAuth(self.journal, self.injector, tokens, oauth_clients)

    @property
    def base_url(self) -> str:
        """Where clients reach the sandbox (scheme://host:port): upload, thumbnail and Swagger URLs use it."""
        return self.media.base_url

    @base_url.setter
    def base_url(self, url: str) -> None:
        """Set once the port is bound (and by tests that put a TLS front before the sandbox)."""
        self.media.base_url = url

    def state_json(self) -> bytes:
        """The body of GET /_sandbox/state."""
        with self.journal.lock:
            doc = {"media": self.media.snapshot(), "violations": self.journal.violations(),
                   "events_count": self.journal.events_count()}
        return json.dumps(doc).encode()

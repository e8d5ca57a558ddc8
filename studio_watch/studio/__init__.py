"""All HTTP: the Studio API client, its transport, tokens, URL imports."""

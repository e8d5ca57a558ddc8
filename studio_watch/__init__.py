"""studio-watch: watched folders → a durable queue → Canvas Studio, never losing or duplicating a recording."""

__version__ = "0.1.0"

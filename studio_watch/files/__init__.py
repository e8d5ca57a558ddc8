"""The filesystem: which files qualify, watchers, opening/hashing/moving sources."""

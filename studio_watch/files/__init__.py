"""The filesystem: which files qualify, observers and the watcher, opening, reading and moving sources."""

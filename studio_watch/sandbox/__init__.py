"""The Studio emulator: stands alone, imports nothing of the rest of studio_watch."""

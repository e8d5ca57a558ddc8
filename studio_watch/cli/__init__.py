"""The only layer that prints, reads stdin or picks exit codes."""

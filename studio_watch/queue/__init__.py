"""All SQL: the durable job queue."""

"""Thin Prefect tasks around the segmodel engine: one verb per task, one task run per shard."""

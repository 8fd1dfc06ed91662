"""The response cache (exact match, streams recorded and replayed) and request coalescing."""

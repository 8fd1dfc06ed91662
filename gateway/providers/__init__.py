"""Upstream providers that are not reached over HTTP."""

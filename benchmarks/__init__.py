"""`make bench`: the gateway and the mock upstream as real processes, measured side by side."""

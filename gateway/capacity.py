"""What one worker can hold, from its file-descriptor limit: the defaults for connection caps.

A relayed stream holds two sockets (the client's and the upstream's), so a worker with ``n``
descriptors can hold about ``(n - RESERVED_FDS) / 2`` streams. Fixed defaults (256 per deployment,
as before) refused 57% of 600 concurrent streams on a worker that could serve them all.
"""

from __future__ import annotations

import resource

RESERVED_FDS = 512  # listening sockets, the store, Redis, log files, metrics files, slack
MAX_SOFT_LIMIT = 1 << 20


def raise_fd_limit() -> int:
    """Lift the soft descriptor limit to the hard one (as nginx's worker_rlimit_nofile does)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard if hard != resource.RLIM_INFINITY else MAX_SOFT_LIMIT, MAX_SOFT_LIMIT)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else MAX_SOFT_LIMIT
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def streams_per_worker(fd_limit: int | None = None) -> int:
    """How many relayed streams one worker can hold open at once."""
    if fd_limit is None:
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if fd_limit == resource.RLIM_INFINITY:
            fd_limit = MAX_SOFT_LIMIT
    return max(64, (fd_limit - RESERVED_FDS) // 2)

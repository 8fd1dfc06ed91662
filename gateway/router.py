"""Model routes to deployments: which deployment serves the next request for a model."""

from __future__ import annotations

import random
from collections.abc import Mapping

from gateway.config import Deployment, ModelRoute


def choose_deployment(
    route: ModelRoute,
    deployments: Mapping[str, Deployment],
    *,
    rng: random.Random | None = None,
) -> Deployment:
    """Pick one of the route's deployments at random, in proportion to their weights."""
    candidates = [deployments[name] for name in route.deployments]
    if len(candidates) == 1:
        return candidates[0]
    weights = [d.weight for d in candidates]
    return (rng or random).choices(candidates, weights=weights, k=1)[0]

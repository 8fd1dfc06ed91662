"""The HTTP layer: make_app(config), middlewares and thin handlers."""

from gateway.web.app import make_app

__all__ = ["make_app"]

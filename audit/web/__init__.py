"""The auditor's read-only web dashboard (``fedcommons audit serve``)."""

from audit.web.app import COOKIE, create_app

__all__ = ["COOKIE", "create_app"]

"""The auditor's read-only web dashboard (``fedcommons audit serve``).

:mod:`.app` routes and tokens, :mod:`.views` each page's data, :mod:`.plots`
its SVG charts, :mod:`.jobs` "verify now".
"""

from audit.web.app import COOKIE, create_app

__all__ = ["COOKIE", "create_app", "jobs", "plots", "views"]

"""Flask's JSON provider, with one change: a body nested too deeply for the parser is bad input.

Python's ``json`` decoder recurses once per nesting level and raises ``RecursionError`` (not a
``ValueError``) at about a thousand levels, so ``request.get_json()`` let it escape as a 500.
Turned into a ``ValueError`` here, it takes werkzeug's path for malformed JSON: 400 ``bad_request``.
No real request nests deeper than a few levels.
"""

from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider


class QuotaJSONProvider(DefaultJSONProvider):
    sort_keys = False
    ensure_ascii = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("the JSON body is nested too deeply") from None

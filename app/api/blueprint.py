"""The Blueprint every API module uses: flask-smorest's, with its bodies read by `edges.loads`.

webargs parses JSON with the standard library itself, so without this parser a 5000-digit
integer or a lone surrogate would reach a view (or fail inside webargs) as a 500.
"""

from __future__ import annotations

from typing import Any

import flask
import flask_smorest
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from app.api.edges import loads


class ApiParser(FlaskParser):
    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return core.missing
        # webargs answers a json.JSONDecodeError or UnicodeDecodeError with "Invalid JSON body."
        return loads(req.get_data(cache=True).decode("utf-8"))


class Blueprint(flask_smorest.Blueprint):  # type: ignore[misc]
    ARGUMENTS_PARSER = ApiParser()

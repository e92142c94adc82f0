"""GET /openapi.json describes exactly the routes the app serves, with the methods it serves."""
from __future__ import annotations

import re

try:
    from test_backend_app import make_app
except ImportError:  # tests/ imported as a package
    from tests.test_backend_app import make_app


def test_the_openapi_description_matches_the_app_routes(tmp_path):
    app = make_app(tmp_path)
    spec = app.test_client().get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    served = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert served == described
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and "4XX" in op["responses"], (path, method)

"""Every protected route refuses a missing token and each bad kind of token with 401."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import jwt as pyjwt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_jwt_extended import create_access_token

from app.api import PUBLIC_ENDPOINTS
from tests.conftest import Auth


def protected_routes(app: Flask) -> Iterator[tuple[str, str]]:
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC_ENDPOINTS or rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", "x", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            yield method, path


def bad_tokens(app: Flask, auth: Auth) -> dict[str, str | None]:
    tokens = auth.login()
    good = tokens["access_token"]
    revoked = auth.login()["access_token"]
    auth.client.post("/api/auth/logout", headers=auth.headers(revoked))
    with app.app_context():
        expired = create_access_token("admin", expires_delta=timedelta(seconds=-10))
    header, payload, signature = good.split(".")
    tampered_payload = pyjwt.encode({"sub": "root"}, "k" * 32, algorithm="HS256").split(".")[1]
    return {
        "missing": None,
        "garbage": "not-a-jwt",
        "tampered-signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "tampered-payload": f"{header}.{tampered_payload}.{signature}",
        "wrong-key": pyjwt.encode(
            {"sub": "admin", "type": "access", "jti": "j", "fresh": True}, "w" * 32, "HS256"
        ),
        "alg-none": pyjwt.encode({"sub": "admin", "type": "access"}, None, algorithm="none"),
        "expired": expired,
        "revoked": revoked,
        "refresh-as-access": tokens["refresh_token"],
    }


def test_every_protected_route_refuses_bad_tokens(
    app: Flask, client: FlaskClient, auth: Auth
) -> None:
    routes = list(protected_routes(app))
    assert ("GET", "/api/openapi.json") in routes
    assert ("GET", "/api/tasks/x") in routes
    assert ("POST", "/api/auth/logout") in routes
    failures = []
    for kind, token in bad_tokens(app, auth).items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for method, path in routes:
            response = client.open(path, method=method, headers=headers, json={})
            body = response.get_json(silent=True) or {}
            if response.status_code != 401 or body.get("error", {}).get("code") != "unauthorized":
                failures.append((kind, method, path, response.status_code))
    assert failures == []


def test_public_endpoints_need_no_token(client: FlaskClient) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize("scheme", ["Basic abc", "Bearer", "Token abc"])
def test_malformed_authorization_header(client: FlaskClient, scheme: str) -> None:
    response = client.get("/api/openapi.json", headers={"Authorization": scheme})
    assert response.status_code == 401

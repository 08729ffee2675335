"""schemathesis over the whole spec, against the live app: a real gunicorn on the embedded
SQLite broker, no worker (tasks queue and stay queued, so nothing heavy runs).

Every operation gets valid and invalid examples (a bounded number, the heavy operations few);
the answers must be: never a server error, always the documented status code, content type and
body schema, and never a success for an invalid request.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests import support

pytestmark = pytest.mark.integration

#: Examples per operation and generation mode.
EXAMPLES = 25
HEAVY_EXAMPLES = 5
#: Operations that start work or touch the broker: fewer examples keep the suite quick.
HEAVY = {
    "POST /api/backtest/run",
    "POST /api/training/start/batch",
    "POST /api/hyperparameter/optimize/",
    "POST /api/trading/auto/start",
    "POST /api/tasks/ping",
    "POST /api/risk/halt",
    "GET /api/market/bars/{symbol}",
    "GET /api/trading/signal/{symbol}",
    "GET /api/dashboard/all_data",
    "GET /health",
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    port = support.free_port()
    env = support.service_env(
        DATABASE_DIR=str(tmp),
        MODELS_DIR=str(tmp / "models"),
        BEST_PARAMS_DIR=str(tmp / "best_params"),
        PORT=str(port),
        WATCHLIST="AAPL,MSFT,SPY",
        LOG_LEVEL="WARNING",
        GUNICORN_ACCESS_LOG="/dev/null",
    )
    support.migrate(env)
    args = [str(support.BIN / "gunicorn"), "--config", "gunicorn_config.py", "app:create_app()"]
    process = support.Process(args, env, tmp / "gunicorn.log")
    base = f"http://127.0.0.1:{port}"
    try:
        support.wait_until(lambda: support.http_ok(f"{base}/health"), 60, "gunicorn")
    except AssertionError:
        process.stop()
        raise AssertionError(process.output()[-3000:]) from None
    yield {"base": base, "secret": (tmp / "secret_key").read_text().strip(), "process": process}
    process.stop()
    assert "Traceback" not in process.output(), process.output()[-3000:]


def access_token(secret: str) -> str:
    """A fresh token per request (signed with the installation's secret, as login would), so
    that a generated logout revokes only its own token."""
    now = int(time.time())
    claims = {
        "sub": "admin",
        "type": "access",
        "fresh": True,
        "jti": str(uuid.uuid4()),
        "fam": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    return pyjwt.encode(claims, secret, algorithm="HS256")


@dataclass
class Client:
    session: requests.Session
    secret: str
    calls: Counter[str]
    failures: dict[str, list[str]]


def exercise(operation: Any, mode: GenerationMode, examples: int, client: Client) -> None:
    """Call one operation with `examples` generated cases; record each failed check."""
    label = f"{operation.method.upper()} {operation.path}"

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), _=st.just(None))
    def run(case: Any, _: None) -> None:
        headers = {"Authorization": f"Bearer {access_token(client.secret)}"}
        response = case.call(session=client.session, headers=headers, timeout=30)
        client.calls[mode.value] += 1
        client.calls[f"status {response.status_code}"] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (AssertionError, FailureGroup) as exc:
            client.failures.setdefault(label, []).append(f"{mode.value}: {exc}"[:1500])

    run()


def test_every_operation_conforms_to_the_spec(live_api: dict[str, Any]) -> None:
    base, secret = live_api["base"], live_api["secret"]
    spec = requests.get(
        f"{base}/api/openapi.json",
        headers={"Authorization": f"Bearer {access_token(secret)}"},
        timeout=10,
    ).json()
    schema = schemathesis.openapi.from_dict(spec)
    schema.config.update(base_url=base)
    session = requests.Session()
    calls: Counter[str] = Counter()
    failures: dict[str, list[str]] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 24  # every route of the API
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        examples = HEAVY_EXAMPLES if label in HEAVY else EXAMPLES
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                exercise(operation, mode, examples, Client(session, secret, calls, failures))
            except Unsatisfiable:  # nothing to get wrong: an operation without parameters
                assert mode is GenerationMode.NEGATIVE, label
                calls["no invalid input possible"] += 1
    print(f"\nschemathesis: {len(operations)} operations, {dict(calls)}")
    assert failures == {}, "\n\n".join(f"{k}:\n" + "\n".join(v[:2]) for k, v in failures.items())

"""Unsafe configuration stops every entry point with one line naming the key."""

from __future__ import annotations

import subprocess

import pytest

from tests import support

pytestmark = [pytest.mark.integration, pytest.mark.spread]

UNSAFE = {
    "paper without keys": ({"TRADING_MODE": "paper"}, "ALPACA_API_KEY"),
    "bad mode": ({"TRADING_MODE": "foo"}, "TRADING_MODE"),
    "negative positions": ({"RISK_MAX_POSITIONS": "-1"}, "RISK_MAX_POSITIONS"),
    "exposure above 1": ({"RISK_MAX_PORTFOLIO_EXPOSURE": "1.2"}, "RISK_MAX_PORTFOLIO_EXPOSURE"),
    "live with default password": (
        {
            "TRADING_MODE": "live",
            "ALPACA_PAPER": "false",
            "ALPACA_API_KEY": "k",
            "ALPACA_API_SECRET": "s",
            "ADMIN_PASSWORD": "password",
        },
        "ADMIN_PASSWORD",
    ),
    "paper with short jwt secret": (
        {
            "TRADING_MODE": "paper",
            "ALPACA_API_KEY": "k",
            "ALPACA_API_SECRET": "s",
            "ADMIN_PASSWORD": "long-enough-password",
            "JWT_SECRET_KEY": "too-short",
        },
        "JWT_SECRET_KEY",
    ),
}

ENTRY_POINTS = {
    "flask": [str(support.BIN / "flask"), "--app", "app", "db", "current"],
    "gunicorn": [
        str(support.BIN / "gunicorn"),
        "--config",
        "gunicorn_config.py",
        "--bind",
        "127.0.0.1:0",
        "app:create_app()",
    ],
    "celery": [str(support.BIN / "celery"), "--app", "app.make_celery", "inspect", "ping"],
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_configuration_refuses_to_start(entry: str, case: str, tmp_path) -> None:
    env_overrides, key = UNSAFE[case]
    env = support.service_env(DATABASE_DIR=str(tmp_path), **env_overrides)
    result = subprocess.run(
        ENTRY_POINTS[entry], env=env, cwd=support.ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "configuration error" in line]
    assert len(lines) == 1, result.stderr[-2000:]
    assert f"configuration error: {key}" in lines[0]
    assert "Traceback" not in result.stderr

""".env.example documents every setting, and its values load."""

from __future__ import annotations

import re

from app.config import Settings, load_settings
from tests.support import ROOT


def test_env_example_lists_every_key() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert listed == {name.upper() for name in Settings.model_fields}


def test_env_example_loads(monkeypatch) -> None:
    monkeypatch.setenv("ENV_FILE", str(ROOT / ".env.example"))
    settings = load_settings()
    assert settings.risk_max_positions == 7
    assert len(settings.watchlist) == 32

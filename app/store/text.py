"""Text every database, log and JSON encoder can take.

A lone surrogate ("\\ud800") is a valid JSON escape and a valid Python str, but not Unicode:
SQLite, PostgreSQL and UTF-8 logs refuse it. Text from outside (an API body, a kill-switch
reason) is made storable by replacing each one with U+FFFD, so it can never stop a write.
"""

from __future__ import annotations

import re

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text)

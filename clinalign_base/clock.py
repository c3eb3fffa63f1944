"""The one timestamp format of every record and manifest."""

from datetime import datetime, timezone


def utc_now() -> str:
    """Now, in UTC, ISO 8601 to the second (e.g. 2026-01-31T12:00:00+00:00)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

"""Alias for one release: moved to `clinalign_base.offline` (the base layer); import it from there."""

from clinalign_base.offline import *  # noqa: F403
from clinalign_base.offline import (  # noqa: F401
    ensure_offline_defaults,
)

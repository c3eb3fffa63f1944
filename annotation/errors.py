"""Alias for one release: moved to `clinalign_base.errors` (the base layer); import it from there."""

from clinalign_base.errors import *  # noqa: F403
from clinalign_base.errors import (  # noqa: F401
    ClinalignError,
    InputError,
)

"""Alias for one release: moved to `clinalign_base.atomic` (the base layer); import it from there."""

from clinalign_base.atomic import *  # noqa: F403
from clinalign_base.atomic import (  # noqa: F401
    atomic_dir,
    swap_into_place,
    temp_dir_beside,
    write_json_atomic,
    write_private_text,
)

"""Alias for one release: moved to `clinalign_base.manifest` (the base layer); import it from there."""

from clinalign_base.manifest import *  # noqa: F403
from clinalign_base.manifest import (  # noqa: F401
    MANIFEST_NAME,
    SCHEMA,
    TRACKED_PACKAGES,
    build_manifest,
    environment,
    file_sha256,
    git_commit,
    path_sha256,
    read_manifest,
    ref,
    write_manifest,
)

"""Clinician side of clinalign: feedback records, stores, PHI gate, export, agreement, review app.

Importing any clinalign package switches every library's telemetry and hub access off first
(the base layer, `clinalign_base`, does it on import).
"""

import clinalign_base  # noqa: F401  (offline / telemetry-off defaults before any HF import)

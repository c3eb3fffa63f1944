"""Clinician side of clinalign: feedback records, stores, PHI gate, export, agreement, review app.

Importing any clinalign package switches every library's telemetry and hub access off first.
"""

from annotation.offline import ensure_offline_defaults

ensure_offline_defaults()

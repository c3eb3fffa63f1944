"""The base layer every clinalign package may import, and which imports none of them.

errors, atomic writes, JSONL, lineage manifests, offline defaults, the clock and the model resolver
(builtin model names → local folders). Importing it switches every library's telemetry and hub
access off first (`offline.ensure_offline_defaults`).
"""

from clinalign_base.offline import ensure_offline_defaults

ensure_offline_defaults()

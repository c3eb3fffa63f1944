"""Blind side-by-side review by logged-in clinicians (Gradio), feeding votes back into the store.

- `accounts`: the users file (salted scrypt hashes) and login checks.
- `queue`: which pair a clinician sees next; recording each vote exactly once.
- `security`: the login wall in front of every route.
- `app`: the Gradio UI and the two script endpoints.
"""

"""The human review queue: a web app where reviewers accept, reject, correct and add codes.

Modules: ``auth`` (accounts, passwords, sessions), ``assignment`` (pure assignment
strategies), ``queue`` (what a user reviews, in which order), ``decisions`` (the
append-only log and the codings derived from it), ``view`` (what the passage page
shows), ``codes`` (codebook lookup and search), ``app`` (FastAPI routes).
"""

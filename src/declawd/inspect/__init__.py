"""Content inspection at the gateway proxy (issue 9): per-sandbox CA, the sans-IO HTTP layer
(h11/h2), the body pipeline (transformations, vault injection and scrubbing), request audit.

`model` holds the types every part shares; see docs/inspection.md.
"""

"""Templates: declarative specs → cached read-only layers + metadata → sandboxes' lower dirs.

Owns everything under `settings.templates_path` (layers, build contexts, temp dirs) and the
template/build records' meaning. Invariant: a layer never changes after it is committed, so
sandboxes can share it as an overlay lower dir and a template is immutable once built.
"""

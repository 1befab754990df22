"""Cluster mode: a control plane over the shared store, and node agents (docs/cluster.md).

`ca` makes and checks the mutual-TLS identities, `placement` picks a node for a create,
`sweep` marks silent nodes down, `wire` is the internal API's JSON, `agent` is one node's
process (`declawd node`), `control` the control plane's internal API and `remote` the
facade the API routes use in place of a local `Node`.
"""

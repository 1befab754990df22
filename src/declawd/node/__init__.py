"""The node: everything declawd does on one machine (sandboxes, networks, envd sessions).

`Node` (node.py) is the public interface the API uses; it is built from `NodeParts`
(parts.py) so its create, undo and reconcile logic can run against fakes.
"""

"""The node: everything declawd does on one machine (sandboxes, networks, envd)."""

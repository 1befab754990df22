"""declawd: a self-hostable sandbox platform for untrusted code, speaking the Declaw API.

The public surface is small: the `declawd` CLI, `Settings`, and the typed client for
our extension routes (`declawd.client`). Everything else is internal.
"""

__version__ = "0.1.0"

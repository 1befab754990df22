"""Host plumbing: run a command (optionally inside a netns) and enter network namespaces.

The one home for what every package needs from the host: `run`/`run_sync` with a single
error type `CommandFailed`, named netns create/delete/enter (syscalls; rtnetlink in `host.rtnl`), and `undo_all` for teardown
that reports what it could not undo. Nothing else in declawd spawns a short-lived command
or calls `setns` itself.
"""

from declawd.host.commands import (
    CommandFailed,
    Completed,
    in_netns,
    run,
    run_sync,
    stream,
)
from declawd.host.netns import (
    NETNS_DIR,
    NetnsError,
    NetnsThread,
    add_netns,
    add_netns_sync,
    call_in_netns,
    delete_link,
    delete_link_sync,
    delete_netns,
    delete_netns_sync,
    enter_netns,
    link_exists,
    list_netns,
    netns_exists,
    netns_path,
    socket_in_netns,
    sysctls,
    write_sysctls,
)
from declawd.host.teardown import TeardownFailed, undo_all, undo_all_sync

__all__ = [
    "NETNS_DIR",
    "CommandFailed",
    "Completed",
    "NetnsError",
    "NetnsThread",
    "TeardownFailed",
    "add_netns",
    "add_netns_sync",
    "call_in_netns",
    "delete_link",
    "delete_link_sync",
    "delete_netns",
    "delete_netns_sync",
    "enter_netns",
    "in_netns",
    "link_exists",
    "list_netns",
    "netns_exists",
    "netns_path",
    "run",
    "run_sync",
    "socket_in_netns",
    "stream",
    "sysctls",
    "undo_all",
    "undo_all_sync",
    "write_sysctls",
]

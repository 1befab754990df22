"""rtnetlink in-process (pyroute2): links, addresses and routes of the calling thread's netns.

A netlink socket belongs to the netns of the thread that opened it, so `Rtnl` is opened on
a thread that is already inside the namespace (`NetnsThread`, `call_in_netns`) and used
there. No `ip` process per change. Invariant: every refusal raises `RtnlError` naming the
operation and the interface; "already gone" on delete is not one.
"""

from __future__ import annotations

import errno
import os
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from declawd.errors import Internal


class RtnlError(Internal):
    """The kernel refused an rtnetlink request; the message names what and where."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"rtnetlink {what}: {os.strerror(code)}")
        self.what = what
        self.errno = code


class Rtnl:
    """One rtnetlink socket in the netns of the thread that makes it (a context manager)."""

    def __init__(self) -> None:
        self._ipr = IPRoute()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._ipr.close()

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._ipr, method)(*args, **kwargs)
        except NetlinkError as exc:
            raise RtnlError(what, exc.code) from exc

    def index(self, name: str) -> int | None:
        """The interface index of `name`, None when there is no such interface."""
        found = self._call(f"lookup {name}", "link_lookup", ifname=name)
        return int(found[0]) if found else None

    def require(self, name: str) -> int:
        """The interface index of `name`; RtnlError (ENODEV) when it does not exist."""
        idx = self.index(name)
        if idx is None:
            raise RtnlError(f"lookup {name}", errno.ENODEV)
        return idx

    def add_veth(self, name: str, peer: str, peer_netns_fd: int) -> None:
        """A veth `name` here whose peer `peer` is made inside the netns of `peer_netns_fd`."""
        self._call(f"link add {name} type veth peer {peer}", "link", "add", ifname=name,
                   kind="veth", peer={"ifname": peer, "net_ns_fd": peer_netns_fd})  # fmt: skip

    def delete(self, name: str) -> bool:
        """Delete interface `name` (a veth takes its peer along); False if already gone."""
        try:
            self._ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise RtnlError(f"link del {name}", exc.code) from exc
        return True

    def set_link(self, index: int, *, up: bool = True, alias: str | None = None) -> None:
        """Bring interface `index` up (and set its alias, when given) in one request."""
        fields: dict[str, Any] = {"state": "up" if up else "down"}
        if alias is not None:
            fields["ifalias"] = alias
        self._call(f"link set {index}", "link", "set", index=index, **fields)

    def replace_address(self, index: int, address: str, prefixlen: int) -> None:
        self._call(f"addr replace {address}/{prefixlen} dev {index}", "addr", "replace",
                   index=index, address=address, prefixlen=prefixlen)  # fmt: skip

    def replace_default_route(self, gateway: str) -> None:
        self._call(f"route replace default via {gateway}", "route", "replace",
                   dst="0.0.0.0/0", gateway=gateway)  # fmt: skip

    def aliases(self) -> dict[str, str]:
        """name → alias ("" when none) of every interface here."""
        links = self._call("link dump", "get_links")
        return {
            str(link.get_attr("IFLA_IFNAME")): str(link.get_attr("IFLA_IFALIAS") or "")
            for link in links
        }

"""Lab configuration: the simulated internet's hosts, aliases, TTLs and TXT records.

Pure parsing and validation of the JSON config into a frozen `LabConfig`. Invariants it
guards: every name is a valid DNS name in lowercase without a trailing dot (a host may be a
wildcard `*.zone`, answering every name below the zone that exists nowhere else); a served
address belongs to exactly one host and is never a non-public or reserved lab address
(DNS-only hosts may point anywhere, so the resolver's stripping can be tested); CNAME
chains are acyclic and end within 8 hops.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from declawd.addresses import LAB_DNS_ADDRESS, LAB_LINK

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_CNAME_HOPS = 8
DEFAULT_TTL = 60

# Ranges a served host may use besides globally routable space: the documentation ranges
# the lab is built on. 192.0.2.0/24 is this machine's uplink and stays excluded.
_LAB_RANGES = tuple(
    ipaddress.ip_network(n) for n in ("203.0.113.0/24", "198.51.100.0/24", "2001:db8::/32")
)
_NEVER_SERVED = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", str(LAB_LINK), f"{LAB_DNS_ADDRESS}/32")
)
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_HOST_KEYS = {
    "name",
    "addresses",
    "http",
    "https",
    "banner_ports",
    "tcp_echo_ports",
    "udp_echo_ports",
    "h2",
    "cert_issuer",
    "cert_names",
}
CERT_ISSUERS = ("lab", "self-signed")
_TOP_KEYS = {"hosts", "cnames", "ttl", "default_ttl", "txt"}


class LabConfigError(ValueError):
    """A config problem, naming the field it is about (e.g. `hosts[2].addresses[0]`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class LabHost:
    name: str
    addresses: tuple[IPAddress, ...]
    http: bool = False
    https: bool = False
    banner_ports: dict[int, str] = field(default_factory=dict)
    tcp_echo_ports: tuple[int, ...] = ()
    udp_echo_ports: tuple[int, ...] = ()
    h2: bool = False  # HTTPS also offers HTTP/2 by ALPN (h2, then http/1.1)
    cert_issuer: str = "lab"  # "self-signed": a leaf no CA vouches for (verification fails)
    cert_names: tuple[str, ...] = ()  # names the leaf covers instead of the host's own

    @property
    def serves(self) -> bool:
        """True when the host runs any service; only then are its addresses bound."""
        return bool(
            self.http
            or self.https
            or self.banner_ports
            or self.tcp_echo_ports
            or self.udp_echo_ports
        )


@dataclass(frozen=True)
class LabConfig:
    hosts: tuple[LabHost, ...]
    cnames: dict[str, str] = field(default_factory=dict)
    ttl: dict[str, int] = field(default_factory=dict)
    default_ttl: int = DEFAULT_TTL
    txt: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def host(self, name: str) -> LabHost | None:
        """The host answering `name`: its own, else the closest wildcard `*.zone` above it
        (a name that is an alias or holds TXT exists, so no wildcard stands in for it)."""
        wanted = name.lower().rstrip(".")
        exact = next((h for h in self.hosts if h.name == wanted), None)
        if exact is not None or wanted in self.cnames or wanted in self.txt:
            return exact
        labels = wanted.split(".")
        for i in range(1, len(labels)):
            pattern = "*." + ".".join(labels[i:])
            found = next((h for h in self.hosts if h.name == pattern), None)
            if found is not None:
                return found
        return None

    def host_for_address(self, address: str) -> LabHost | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        return next((h for h in self.hosts if h.serves and ip in h.addresses), None)

    def bound_addresses(self) -> list[IPAddress]:
        """Addresses to put on the lab's `lo`: those of hosts that serve something."""
        return [a for h in self.hosts if h.serves for a in h.addresses]

    def ttl_for(self, name: str) -> int:
        return self.ttl.get(name, self.default_ttl)

    def names_for_host(self, host: LabHost) -> list[str]:
        """The host's name plus every alias whose CNAME chain ends at it (certificate SANs)."""
        names = [host.name]
        for alias in sorted(self.cnames):
            if self.cname_chain(alias)[-1] == host.name:
                names.append(alias)
        return names

    def certificate_names(self, host: LabHost) -> list[str]:
        """The SANs of the host's leaf: `cert_names` when set (a wrong-name host), else its own."""
        return list(host.cert_names) or self.names_for_host(host)

    def cname_chain(self, name: str) -> list[str]:
        """`name` followed by every CNAME target it leads to (validated acyclic)."""
        chain = [name]
        while chain[-1] in self.cnames and len(chain) <= MAX_CNAME_HOPS:
            chain.append(self.cnames[chain[-1]])
        return chain


def normalize_name(raw: object, field_name: str, *, wildcard: bool = False) -> str:
    """Lower case without the trailing dot; `wildcard` admits one leading `*.` label."""
    if not isinstance(raw, str) or not raw:
        raise LabConfigError(field_name, "must be a non-empty DNS name")
    name = raw.lower().rstrip(".")
    labels = name.split(".")
    if wildcard and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise LabConfigError(field_name, f"not a valid DNS name: {raw!r}")
    return name


def _port(raw: object, field_name: str) -> int:
    # JSON object keys arrive as strings, so accept decimal strings too.
    if isinstance(raw, str) and raw.isdigit():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 < raw < 65536:
        raise LabConfigError(field_name, f"must be a port number 1-65535, not {raw!r}")
    return raw


def _ports(raw: object, field_name: str) -> tuple[int, ...]:
    if not isinstance(raw, list):
        raise LabConfigError(field_name, "must be a list of port numbers")
    return tuple(_port(p, f"{field_name}[{i}]") for i, p in enumerate(raw))


def _bool(raw: object, field_name: str) -> bool:
    if not isinstance(raw, bool):
        raise LabConfigError(field_name, f"must be true or false, not {raw!r}")
    return raw


def _cert_issuer(raw: object, field_name: str) -> str:
    if raw not in CERT_ISSUERS:
        raise LabConfigError(field_name, f"must be one of {list(CERT_ISSUERS)}, not {raw!r}")
    return str(raw)


def _cert_names(raw: object, field_name: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise LabConfigError(field_name, "must be a list of DNS names")
    return tuple(normalize_name(n, f"{field_name}[{i}]", wildcard=True) for i, n in enumerate(raw))


def _servable(ip: IPAddress) -> bool:
    if any(ip in net for net in _NEVER_SERVED if net.version == ip.version):
        return False
    return ip.is_global or any(ip in net for net in _LAB_RANGES if net.version == ip.version)


def _parse_host(raw: object, where: str) -> LabHost:
    if not isinstance(raw, dict):
        raise LabConfigError(where, "must be an object")
    unknown = set(raw) - _HOST_KEYS
    if unknown:
        raise LabConfigError(where, f"unknown keys {sorted(unknown)}")
    name = normalize_name(raw.get("name"), f"{where}.name", wildcard=True)
    raw_addrs = raw.get("addresses")
    if not isinstance(raw_addrs, list) or not raw_addrs:
        raise LabConfigError(f"{where}.addresses", "must be a non-empty list of IP addresses")
    addresses: list[IPAddress] = []
    for i, a in enumerate(raw_addrs):
        try:
            addresses.append(ipaddress.ip_address(a))
        except ValueError:
            raise LabConfigError(f"{where}.addresses[{i}]", f"not an IP address: {a!r}") from None
    if len(set(addresses)) != len(addresses):
        raise LabConfigError(f"{where}.addresses", "contains duplicates")
    raw_banners = raw.get("banner_ports", {})
    if not isinstance(raw_banners, dict):
        raise LabConfigError(f"{where}.banner_ports", 'must be an object {"port": "banner"}')
    banners: dict[int, str] = {}
    for key, text in raw_banners.items():
        port = _port(key, f"{where}.banner_ports.{key}")
        if not isinstance(text, str) or "\n" in text or "\r" in text:
            raise LabConfigError(f"{where}.banner_ports.{key}", "must be a one-line string")
        banners[port] = text
    host = LabHost(
        name=name,
        addresses=tuple(addresses),
        http=_bool(raw.get("http", False), f"{where}.http"),
        https=_bool(raw.get("https", False), f"{where}.https"),
        banner_ports=banners,
        tcp_echo_ports=_ports(raw.get("tcp_echo_ports", []), f"{where}.tcp_echo_ports"),
        udp_echo_ports=_ports(raw.get("udp_echo_ports", []), f"{where}.udp_echo_ports"),
        h2=_bool(raw.get("h2", False), f"{where}.h2"),
        cert_issuer=_cert_issuer(raw.get("cert_issuer", "lab"), f"{where}.cert_issuer"),
        cert_names=_cert_names(raw.get("cert_names", []), f"{where}.cert_names"),
    )
    tls_only = {
        "h2": host.h2,
        "cert_issuer": host.cert_issuer != "lab",
        "cert_names": host.cert_names,
    }
    for key, used in tls_only.items():
        if used and not host.https:
            raise LabConfigError(f"{where}.{key}", 'needs "https": true')
    tcp = [80] * host.http + [443] * host.https + list(banners) + list(host.tcp_echo_ports)
    if len(set(tcp)) != len(tcp):
        raise LabConfigError(where, f"a TCP port is used twice: {sorted(tcp)}")
    if len(set(host.udp_echo_ports)) != len(host.udp_echo_ports):
        raise LabConfigError(f"{where}.udp_echo_ports", "contains duplicates")
    if host.serves:
        for i, ip in enumerate(host.addresses):
            if not _servable(ip):
                raise LabConfigError(
                    f"{where}.addresses[{i}]",
                    f"{ip} cannot be served (non-public or reserved); "
                    "a host without services is DNS-only and may use it",
                )
    return host


def _parse_ttl(raw: object, field_name: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 86400:
        raise LabConfigError(field_name, f"must be an integer 0-86400, not {raw!r}")
    return raw


def parse_config(data: object) -> LabConfig:
    """Validate a decoded JSON config; raises `LabConfigError` naming the bad field."""
    if not isinstance(data, dict):
        raise LabConfigError("config", "must be a JSON object")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise LabConfigError("config", f"unknown keys {sorted(unknown)}")
    raw_hosts = data.get("hosts", [])
    if not isinstance(raw_hosts, list):
        raise LabConfigError("hosts", "must be a list")
    hosts = [_parse_host(h, f"hosts[{i}]") for i, h in enumerate(raw_hosts)]
    owner: dict[IPAddress, str] = {}
    seen: set[str] = set()
    for i, h in enumerate(hosts):
        if h.name in seen:
            raise LabConfigError(f"hosts[{i}].name", f"duplicate host {h.name}")
        seen.add(h.name)
        for ip in h.addresses if h.serves else ():
            if ip in owner:
                raise LabConfigError(
                    f"hosts[{i}].addresses", f"{ip} is already served by {owner[ip]}"
                )
            owner[ip] = h.name

    raw_cnames = data.get("cnames", {})
    if not isinstance(raw_cnames, dict):
        raise LabConfigError("cnames", 'must be an object {"alias": "target"}')
    cnames: dict[str, str] = {}
    for alias_raw, target_raw in raw_cnames.items():
        alias = normalize_name(alias_raw, f"cnames.{alias_raw}")
        if alias in seen:
            raise LabConfigError(f"cnames.{alias_raw}", "is also a host name")
        cnames[alias] = normalize_name(target_raw, f"cnames.{alias_raw}")

    raw_txt = data.get("txt", {})
    if not isinstance(raw_txt, dict):
        raise LabConfigError("txt", 'must be an object {"name": "text" | ["text", ...]}')
    txt: dict[str, tuple[str, ...]] = {}
    for name_raw, value in raw_txt.items():
        name = normalize_name(name_raw, f"txt.{name_raw}")
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(
            isinstance(v, str) and len(v.encode()) <= 255 for v in values
        ):
            raise LabConfigError(f"txt.{name_raw}", "must be a string or list of strings <= 255 B")
        if name in cnames:
            raise LabConfigError(f"txt.{name_raw}", "a CNAME alias cannot hold other records")
        txt[name] = tuple(values)

    config = LabConfig(
        hosts=tuple(hosts),
        cnames=cnames,
        default_ttl=_parse_ttl(data.get("default_ttl", DEFAULT_TTL), "default_ttl"),
        txt=txt,
    )
    for alias in cnames:
        chain = config.cname_chain(alias)
        if len(chain) > MAX_CNAME_HOPS or len(set(chain)) != len(chain):
            raise LabConfigError(f"cnames.{alias}", "CNAME chain loops or is longer than 8 hops")

    raw_ttl = data.get("ttl", {})
    if not isinstance(raw_ttl, dict):
        raise LabConfigError("ttl", 'must be an object {"name": seconds}')
    known = seen | set(cnames) | set(txt)
    for name_raw, value in raw_ttl.items():
        name = normalize_name(name_raw, f"ttl.{name_raw}", wildcard=True)
        if name not in known:
            raise LabConfigError(f"ttl.{name_raw}", "names no configured host, alias or TXT")
        config.ttl[name] = _parse_ttl(value, f"ttl.{name_raw}")
    return config


def default_config_path() -> Path:
    return Path(__file__).with_name("default.json")


def load_config(path: str | Path | None = None) -> LabConfig:
    """Read and validate a config file; `None` means the built-in default."""
    source = Path(path) if path is not None else default_config_path()
    try:
        data = json.loads(source.read_text())
    except OSError as exc:
        raise LabConfigError(str(source), f"cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise LabConfigError(str(source), f"invalid JSON: {exc}") from None
    return parse_config(data)

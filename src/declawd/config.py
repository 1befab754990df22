"""Server settings: one dataclass, filled from defaults, DECLAWD_* env vars and CLI flags.

Every path the platform writes is derived here, so tests can point a whole instance at a
temporary state directory while sharing the (expensive) template layers.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from declawd.addresses import DEFAULT_POOL

_ENV_PREFIX = "DECLAWD_"


@dataclass
class Settings:
    state_dir: Path = Path("/var/lib/declawd")
    templates_dir: Path | None = None
    # The blob store (docs/blobs.md): snapshots, volumes and published template layers. Empty:
    # the state directory. In a cluster, a shared filesystem mounted on every host (NFS).
    blob_dir: Path | None = None
    instance: str = "declawd"
    host: str = "127.0.0.1"
    port: int = 8080
    runtime: str = "runc"
    default_timeout: int = 300
    max_timeout: int = 86400
    pool: str = DEFAULT_POOL
    lab: bool = False
    lab_config: Path | None = None
    upstream_dns: str = ""
    exempt_ranges: list[str] = field(default_factory=list)
    default_memory_mb: int = 1024
    default_cpu_count: int = 2
    default_pids: int = 1024
    # Per-sandbox disk quota (loop-mounted ext4 upper, runtime/quota.py); 0 disables it.
    disk_quota_mb: int = 10240
    # Persistence: periodic snapshots every N s of each running sandbox (0: off), the
    # metrics series' sampling interval, and the volume quota of each team (MiB).
    snapshot_interval_s: int = 0
    metrics_interval_s: float = 5.0
    volume_quota_mb: int = 10240
    # Test-only: fault points for the e2e fault suite (node/faults.py), read once at start.
    faults: str = ""
    # Gateway proxy: time from a client's first byte to a complete ClientHello / request head.
    handshake_timeout: float = 10.0
    # Gateway resolver: a sandbox is answered REFUSED only above this many queries/s
    # sustained over this window (a client asking in a loop is never refused).
    dns_flood_qps: float = 2000.0
    dns_flood_window_s: float = 5.0
    # Content inspection (docs/inspection.md): bodies above this size pass unscanned (with an
    # audit note); vault secrets go over plain HTTP only if the operator allows it.
    inspect_buffer_limit_mb: float = 8.0
    vault_plain_http: bool = False
    # Injection defense's judge (docs/injection.md): an OpenAI-compatible chat completions
    # URL the operator runs; empty: no judge (the classifier decides, the audit says so).
    injection_judge_url: str = ""
    injection_judge_model: str = "injection-judge"
    # The store (docs/store.md): a postgresql:// URL selects PostgreSQL; empty: SQLite at db_path.
    database_url: str = ""
    # Warm pools (node/pool.py): "auto" (the built-in templates on runc, sized from the
    # machine's memory), "off", or "alias[:runtime]=N,..."; the pooled sandboxes' memory
    # budget in MiB (0: a 32nd of the machine's memory).
    warm_pool: str = "auto"
    warm_pool_memory_mb: int = 0
    # Cluster mode (docs/cluster.md). A node agent's id ('' in the single-process default:
    # then this process's node owns every sandbox), the name its certificate carries (its
    # id when empty), the address the control plane calls it at, and its internal port.
    cluster: bool = False  # `declawd server --cluster`: the control plane, no local node
    node_id: str = ""
    node_name: str = ""
    node_address: str = "127.0.0.1"
    node_port: int = 8444
    node_tunnel_port: int = 8445  # port tunnels into the node's sandboxes (cluster/tunnel.py)
    # The control plane: its internal (mTLS) port, the directory of the cluster CA, how
    # long a node certificate lives, how often nodes heartbeat and when one is down.
    internal_port: int = 8443
    cluster_ca_dir: str = ""
    node_cert_hours: float = 24.0
    heartbeat_interval_s: float = 2.0
    node_down_after_s: float = 10.0

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(_ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _coerce(f.name, str(f.type), raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        s = cls(**values)  # type: ignore[arg-type]
        s.state_dir = Path(s.state_dir)
        if s.templates_dir is not None:
            s.templates_dir = Path(s.templates_dir)
        if s.blob_dir is not None:
            s.blob_dir = Path(s.blob_dir)
        s.validate()
        return s

    def validate(self) -> None:
        if self.runtime not in ("runc", "runsc"):
            raise ValueError(f"runtime: must be runc or runsc, not {self.runtime!r}")
        if not self.instance.isidentifier() or len(self.instance) > 12:
            raise ValueError("instance: must be an identifier of at most 12 characters")
        net = ipaddress.ip_network(self.pool)
        if net.version != 4 or net.prefixlen > 24:
            raise ValueError("pool: must be an IPv4 network of /24 or larger")
        if not 0 < self.default_timeout <= self.max_timeout:
            raise ValueError("default_timeout: must be positive and at most max_timeout")
        if self.disk_quota_mb < 0:
            raise ValueError("disk_quota_mb: must be 0 (no quota) or a positive size in MiB")
        if not self.handshake_timeout > 0:
            raise ValueError("handshake_timeout: must be a positive number of seconds")
        if not self.dns_flood_qps > 0:
            raise ValueError("dns_flood_qps: must be a positive number of queries per second")
        if not self.dns_flood_window_s > 0:
            raise ValueError("dns_flood_window_s: must be a positive number of seconds")
        if self.snapshot_interval_s < 0:
            raise ValueError("snapshot_interval_s: must be 0 (off) or a positive number of seconds")
        if not self.metrics_interval_s > 0:
            raise ValueError("metrics_interval_s: must be a positive number of seconds")
        if self.volume_quota_mb <= 0:
            raise ValueError("volume_quota_mb: must be a positive size in MiB")
        if self.warm_pool_memory_mb < 0:
            raise ValueError("warm_pool_memory_mb: must be 0 (auto) or a positive size in MiB")
        from declawd.node.poolspec import parse_pool_spec

        parse_pool_spec(self.warm_pool)  # raises ValueError naming the entry
        if not self.inspect_buffer_limit_mb > 0:
            raise ValueError("inspect_buffer_limit_mb: must be a positive size in MiB")
        if not self.heartbeat_interval_s > 0:
            raise ValueError("heartbeat_interval_s: must be a positive number of seconds")
        if not self.node_down_after_s > self.heartbeat_interval_s:
            raise ValueError("node_down_after_s: must be longer than heartbeat_interval_s")
        if not self.node_cert_hours > 0:
            raise ValueError("node_cert_hours: must be a positive number of hours")

    # Derived paths -----------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.state_dir / "declawd.db"

    @property
    def templates_path(self) -> Path:
        return self.templates_dir or self.state_dir / "templates"

    @property
    def sandboxes_dir(self) -> Path:
        return self.state_dir / "sandboxes"

    @property
    def blobs_path(self) -> Path:
        """The blob store's root (blobs/): `blob_dir`, else the state directory."""
        return self.blob_dir or self.state_dir

    @property
    def blobs_shared(self) -> bool:
        """Whether the blob store is shared by several hosts (template layers are then
        published to it and fetched from it)."""
        return self.blob_dir is not None

    @property
    def snapshots_dir(self) -> Path:
        return self.blobs_path / "snapshots"

    @property
    def volumes_dir(self) -> Path:
        return self.blobs_path / "volumes"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def gateway_dir(self) -> Path:
        return self.state_dir / "gateway"

    @property
    def lab_dir(self) -> Path:
        return self.state_dir / "lab"

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def cluster_ca_path(self) -> Path:
        """The control plane's cluster CA (`ca.crt`, `ca.key`, its own certificates)."""
        return Path(self.cluster_ca_dir) if self.cluster_ca_dir else self.state_dir / "cluster-ca"

    @property
    def node_tls_dir(self) -> Path:
        """A node agent's key, certificate and the cluster CA's certificate."""
        return self.state_dir / "cluster"

    @property
    def envd_path(self) -> Path:
        return self.state_dir / "bin" / "envd"

    @property
    def gateway_netns(self) -> str:
        return f"{self.instance}-gw"

    @property
    def lab_netns(self) -> str:
        return f"{self.instance}-lab"

    def sandbox_netns(self, sandbox_id: str) -> str:
        return f"{self.instance}-{sandbox_id}"

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.sandboxes_dir / sandbox_id


def _coerce(name: str, type_name: str, raw: str) -> object:
    if "bool" in type_name:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if "int" in type_name and "list" not in type_name:
        try:
            return int(raw)
        except ValueError as exc:
            raise ValueError(f"{_ENV_PREFIX}{name.upper()}: not an integer: {raw!r}") from exc
    if type_name == "float":
        try:
            return float(raw)
        except ValueError as exc:
            raise ValueError(f"{_ENV_PREFIX}{name.upper()}: not a number: {raw!r}") from exc
    if "list" in type_name:
        return [p.strip() for p in raw.split(",") if p.strip()]
    return raw

"""The lab: a simulated internet (named hosts with HTTP/1.1 and HTTP/2 over TLS from a lab
CA, authoritative DNS with a query log, a request log per host) in its own netns, for
tests, benchmarks and the demo.

Invariant: everything the lab creates lives in `<instance>-lab` and `<state_dir>/lab`; the
lab never routes anywhere but back to the gateway, so nothing it does reaches a real network.
"""

from declawd.lab.ca import LabCA, ca_bundle_path, ca_cert_path, ensure_ca
from declawd.lab.config import (
    LabConfig,
    LabConfigError,
    LabHost,
    load_config,
    parse_config,
)
from declawd.lab.process import LabError, LabProcess, lab_down
from declawd.lab.requestlog import read_requests
from declawd.lab.topology import ensure_lab_netns, remove_lab_netns
from declawd.lab.upstream import LabUpstream

__all__ = [
    "LabCA",
    "LabConfig",
    "LabConfigError",
    "LabError",
    "LabHost",
    "LabProcess",
    "LabUpstream",
    "ca_bundle_path",
    "ca_cert_path",
    "ensure_ca",
    "ensure_lab_netns",
    "lab_down",
    "load_config",
    "parse_config",
    "read_requests",
    "remove_lab_netns",
]

"""Egress control: policy, the nftables datapath, and the gateway daemon (resolver + proxy).

Traffic from a sandbox leaves only through the per-node gateway namespace, where one
nftables table decides per packet (L4) and hands DNS and name-only destinations to the
gateway daemon (L7). Invariant: the datapath fails closed; without the daemon, nothing
the policy denies gets through, and IPv6 never leaves a sandbox.
"""

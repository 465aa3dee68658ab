"""Addresses and ports for the process groups and servers a run starts."""

from __future__ import annotations

import socket


def node_ip() -> str:
    """This node's address as other nodes reach it (loopback on a one-machine cluster)."""
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # not in a Ray process
        return "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]

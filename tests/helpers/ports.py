"""A free TCP port on this host, for a coordinator that tests start (or expect to find nobody at)."""

import socket


# ------------------------------------------------------------------ two processes
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

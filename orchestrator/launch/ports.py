"""Ports: where a client on this machine reaches a server, whether a port is free, who holds it."""

from __future__ import annotations

import errno
import socket

from orchestrator.core.errors import PreflightError


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (a bind would succeed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def port_owner(port: int) -> str | None:
    """Who listens on a TCP port, as 'pid N (cmdline)', when psutil can tell."""
    import psutil

    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in connections:
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            if conn.pid is None:
                return "another process"
            try:
                cmd = " ".join(psutil.Process(conn.pid).cmdline()) or psutil.Process(conn.pid).name()
            except psutil.Error:
                cmd = "?"
            return f"pid {conn.pid} ({cmd[:80]})"
    return None


def choose_port(host: str, port: int | None) -> int:
    """The given port if nothing holds it (else refuse, naming the owner), or a free one."""
    if not port:  # None or 0: pick one
        return free_port(host)
    check_port(host, port)
    return port


def free_port(host: str) -> int:
    """A port nothing holds on `host`, picked by the kernel; refused when `host` is not this machine's."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:
            raise PreflightError(
                f"cannot bind a port on --host {host}: {exc.strerror or exc}",
                hint="--host must be an address of this machine (default 127.0.0.1)",
            ) from None
        return int(sock.getsockname()[1])


def check_port(host: str, port: int) -> None:
    """Refuse, naming the owner, when `port` on `host` is held or cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    held = _answers(connect_host(host), port)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise PreflightError(
                    f"cannot bind {host}:{port}: {exc.strerror or exc}",
                    hint="--host must be an address of this machine (default 127.0.0.1)",
                ) from None
            held = True
    if held:
        owner = port_owner(port) or "another process"
        raise PreflightError(
            f"port {port} on {host} is already held by {owner}",
            hint="stop it, pass another --port, or leave --port out to pick a free one",
        )


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False

"""``python -m pretrain.launch TORCHRUN_ARGS``: torchrun (``torch.distributed.run``) that keeps a single-node run off
the network (docs/usage.md, "Reliability").

torchrun's rendezvous store (a ``TCPStore`` server in the launcher, at ``--master_addr:--master_port``) listens on
every interface whatever ``--master_addr`` says: ``TCPStore`` binds the wildcard address. For one node with a
loopback ``--master_addr`` (``127.0.0.1``, ``localhost``, ``::1``) and the static rendezvous (the default), this
launcher first binds that port on the loopback address itself and starts the store server on that socket
(``TCPStore(master_listen_fd=...)``, ``multi_tenant=True``); torchrun's own store for the same port then shares
this server (multi-tenant stores in one process share one server per port), so the store listens on loopback only.
It also sets ``GLOO_SOCKET_IFNAME=lo`` and ``NCCL_SOCKET_IFNAME=lo`` (when unset), so the process group's own
sockets (gloo pairs, NCCL bootstrap) bind to loopback too. Anything else (several nodes, a routable address,
``--rdzv-backend c10d``/``--standalone``) goes to torchrun unchanged.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys

LOOPBACK = {"127.0.0.1": socket.AF_INET, "localhost": socket.AF_INET, "::1": socket.AF_INET6}


def single_node_loopback(args) -> bool:
    """Whether torchrun's parsed ``args`` describe one node with a static rendezvous on a loopback address."""
    nnodes = str(args.nnodes).split(":")
    return (
        all(n == "1" for n in nnodes)
        and args.rdzv_backend == "static"
        and not args.standalone
        and not args.rdzv_endpoint
        and args.master_addr in LOOPBACK
    )


def bind_loopback_store(addr: str, port: int, timeout_s: float = 900.0):
    """A multi-tenant ``TCPStore`` server listening on ``addr:port`` only; ``(store, socket)``, both to keep alive.
    ``OSError`` when the port is taken."""
    import torch.distributed as dist

    sock = socket.socket(LOOPBACK[addr], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::1" if LOOPBACK[addr] == socket.AF_INET6 else "127.0.0.1", port))
    sock.listen(socket.SOMAXCONN)
    store = dist.TCPStore(
        addr,
        port,
        is_master=True,
        multi_tenant=True,
        master_listen_fd=sock.fileno(),
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return store, sock


def main(argv: list[str] | None = None) -> None:
    """Parse torchrun's arguments; for a single-node loopback run bind the store (and the process group) to
    loopback first; then run torchrun in this process."""
    from torch.distributed import run as torchrun

    argv = sys.argv[1:] if argv is None else list(argv)
    args = torchrun.parse_args(argv)
    keep = None
    if single_node_loopback(args):
        try:
            keep = bind_loopback_store(args.master_addr, int(args.master_port))
        except OSError as e:
            sys.exit(f"[launch] cannot listen on {args.master_addr}:{args.master_port} ({e}): set MASTER_PORT")
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    try:
        torchrun.main(argv)
    finally:
        del keep


if __name__ == "__main__":
    main()

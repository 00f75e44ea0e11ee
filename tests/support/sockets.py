"""Listening TCP sockets of a process tree, read from /proc (Linux): what a run exposes on which address."""

from __future__ import annotations

import ipaddress
import os
import socket


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _addr(hex_addr: str) -> str:
    """The address of a /proc/net/tcp{,6} ``local_address`` field (host byte order per 32-bit word)."""
    host = bytes.fromhex(hex_addr.split(":")[0])
    words = b"".join(host[i : i + 4][::-1] for i in range(0, len(host), 4))
    return str(ipaddress.ip_address(words))


def listening(pids=None) -> set[tuple[str, int]]:
    """``(address, port)`` of the TCP sockets in LISTEN state (of the processes ``pids``, or of everyone)."""
    inodes = None
    if pids is not None:
        inodes = set()
        for pid in pids:
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
            except OSError:  # the process ended meanwhile
                continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in list(f)[1:]:
                cols = row.split()
                if cols[3] == "0A" and (inodes is None or cols[9] in inodes):
                    found.add((_addr(cols[1]), int(cols[1].split(":")[1], 16)))
    return found


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (torchrun starts its workers in sessions of their own)."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return sorted(tree)


def hold_process_group(seconds: float) -> None:
    """A worker for ``detectron2.engine.launch``: inside the process group, wait ``seconds`` between two barriers
    (so that its sockets can be read), then return."""
    import time

    import torch.distributed as dist

    dist.barrier()
    time.sleep(seconds)
    dist.barrier()

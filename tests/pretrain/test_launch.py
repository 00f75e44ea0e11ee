"""Single-node runs listen on loopback only (pretrain/launch.py): the rendezvous store and the process group's sockets,
measured from /proc/net/tcp{,6} while a 2-process run of tools/pretrain.sh trains."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pretrain import launch
from tests.support.paths import REPO
from tests.support.sockets import free_port, listening, process_tree
from tests.support.tiny import tiny_overrides


def test_a_plain_tcpstore_listens_on_every_interface_whatever_its_host():
    # the torch behaviour this launcher works around: TCPStore("127.0.0.1", ...) binds the wildcard address
    import datetime

    import torch.distributed as dist

    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(5))
    try:
        ours = {a for a, p in listening([os.getpid()]) if p == port}
        assert ours and not ours & {"127.0.0.1", "::1"}, ours
    finally:
        del store


def test_the_launchers_store_listens_on_loopback_only_and_serves_clients():
    import datetime

    import torch.distributed as dist

    port = free_port()
    store, sock = launch.bind_loopback_store("127.0.0.1", port)
    try:
        assert {(a, p) for a, p in listening([os.getpid()]) if p == port} == {("127.0.0.1", port)}
        again = dist.TCPStore("127.0.0.1", port, is_master=True, multi_tenant=True, timeout=datetime.timedelta(5))
        again.set("k", "v")  # torchrun's own store for the port shares the server
        client = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(5))
        assert client.get("k") == b"v"
    finally:
        del store
        sock.close()


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1", "x.py"], True),
        (["--nnodes=1", "--nproc_per_node=2", "x.py"], True),  # torchrun's default master_addr is 127.0.0.1
        (["--nnodes=2", "--nproc_per_node=2", "--master_addr=127.0.0.1", "x.py"], False),
        (["--nnodes=1", "--nproc_per_node=2", "--master_addr=10.0.0.1", "x.py"], False),
        (["--standalone", "--nproc_per_node=2", "x.py"], False),
    ],
)
def test_only_single_node_loopback_static_runs_are_rebound(argv, expect):
    from torch.distributed import run as torchrun

    assert launch.single_node_loopback(torchrun.parse_args(argv)) is expect


@pytest.mark.slow
def test_a_two_process_pretraining_run_listens_on_loopback_only(toy_images, tmp_path):
    port = free_port()
    out = str(tmp_path / "run")
    env = dict(os.environ, OMP_NUM_THREADS="1", GPUS="2", MASTER_PORT=str(port), PYTHON=sys.executable)
    for k in ("MASTER_ADDR", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        env.pop(k, None)
    p = subprocess.Popen(
        ["bash", os.path.join(REPO, "tools", "pretrain.sh"), *tiny_overrides(toy_images, out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = set()
    deadline = time.time() + 280
    while p.poll() is None and time.time() < deadline:
        seen |= listening(process_tree(p.pid))
        time.sleep(0.1)
    log = p.communicate(timeout=60)[0]
    assert p.returncode == 0, log[-3000:]
    assert ("127.0.0.1", port) in seen, seen  # the store
    assert len(seen) >= 3, seen  # and a gloo listener per worker
    assert {a for a, _ in seen} == {"127.0.0.1"}, seen

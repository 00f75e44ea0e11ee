"""Several ViTDet processes on one machine rendezvous through a file, so nothing listens beyond loopback
(transfer/vitdet/train.py: local_rendezvous_url), measured from /proc/net/tcp{,6} while 2 processes hold a group."""

import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("detectron2")

from tests.support.paths import REPO  # noqa: E402
from tests.support.sockets import listening, process_tree  # noqa: E402
from tests.transfer.vitdet.helpers import CFG_DIR  # noqa: E402
from transfer.vitdet import train as vitdet_train  # noqa: E402
from transfer.vitdet.train import local_rendezvous_url  # noqa: E402

TOY_CFG = os.path.join(CFG_DIR, "mask_rcnn_vit_tiny_toy.py")


def test_the_local_rendezvous_is_a_file_in_the_given_folder_and_sets_loopback_sockets(tmp_path, monkeypatch):
    for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        monkeypatch.delenv(k, raising=False)
    assert local_rendezvous_url(str(tmp_path)) == f"file://{tmp_path}/store"
    assert os.environ["GLOO_SOCKET_IFNAME"] == os.environ["NCCL_SOCKET_IFNAME"] == "lo"


def test_a_socket_interface_chosen_by_the_user_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth7")
    local_rendezvous_url(str(tmp_path))
    assert os.environ["GLOO_SOCKET_IFNAME"] == "eth7"


def test_several_local_processes_get_a_file_rendezvous_that_is_removed_afterwards(monkeypatch):
    seen = {}

    def fake_launch(main, num_gpus, num_machines, machine_rank, dist_url, args):
        seen["url"], seen["n"] = dist_url, num_gpus
        seen["existed"] = os.path.isdir(os.path.dirname(dist_url[len("file://") :]))

    monkeypatch.setattr(vitdet_train, "launch", fake_launch)
    vitdet_train.cli(["--config-file", TOY_CFG, "--num-gpus", "2"])
    assert seen["n"] == 2 and seen["url"].startswith("file://") and seen["existed"]
    assert not os.path.exists(os.path.dirname(seen["url"][len("file://") :]))


def test_one_process_keeps_detectron2s_default(monkeypatch):
    seen = {}
    monkeypatch.setattr(vitdet_train, "launch", lambda *a, dist_url, **k: seen.setdefault("url", dist_url))
    vitdet_train.cli(["--config-file", TOY_CFG])
    assert seen["url"] == "auto"


@pytest.mark.slow
def test_two_processes_launched_with_the_local_rendezvous_listen_on_loopback_only(tmp_path):
    """detectron2's launch (as cli calls it) on 2 gloo processes with the file rendezvous; every listening socket of
    the process tree, read every 0.1 s while the group holds."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    code = (
        "from detectron2.engine import launch; from transfer.vitdet.train import local_rendezvous_url; "
        "from tests.support.sockets import hold_process_group; "
        f"launch(hold_process_group, 2, dist_url=local_rendezvous_url({str(tmp_path)!r}), args=(4.0,))"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    seen = set()
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline:
        seen |= listening(process_tree(p.pid))
        time.sleep(0.1)
    log = p.communicate(timeout=60)[0].decode()
    assert p.returncode == 0, log[-3000:]
    assert len(seen) >= 2, seen  # a gloo listener per process, and no store listener at all
    assert {a for a, _ in seen} == {"127.0.0.1"}, seen

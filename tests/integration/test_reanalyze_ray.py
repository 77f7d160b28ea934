"""Runs tests/netns/ (`branet reanalyze --engine ray` on a two-node Ray cluster) inside a private network namespace
with only loopback: `unshare -n`, `ip link set lo up`, then pytest. Ray binds the machine's primary address on
Linux whatever it is told; in such a namespace that is 127.0.0.1, so the cluster and every test request stay on
loopback. Needs root (or CAP_SYS_ADMIN) for unshare; the CI machine and this one run tests as root.

Also here, outside the namespace: the errors that need no cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from branet_pacs.cli import main

from pacs_harness import free_port
from paths import REPO

pytestmark = pytest.mark.integration


def test_ray_engine_tests_pass_in_a_private_network_namespace():
    unshare, ip = shutil.which("unshare"), shutil.which("ip") or "/usr/sbin/ip"
    assert unshare and os.path.exists(ip), "unshare (util-linux) and ip (iproute2) are needed: make setup"
    probe = subprocess.run([unshare, "--net", "--", "true"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0 and "Operation not permitted" in probe.stderr:
        pytest.skip("a private network namespace needs root (or CAP_SYS_ADMIN): the Ray cluster tests did not run "
                    f"({probe.stderr.strip()})")
    assert probe.returncode == 0, probe.stderr
    inner = f"{ip} link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider tests/netns"
    env = {**os.environ, "BRANET_NETNS": "1"}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([unshare, "--net", "--", "sh", "-c", inner], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=1800)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    assert " passed" in output and "skipped" not in output.split("\n")[-2], output[-3000:]


def test_unreachable_ray_address_is_one_clear_line(tmp_path, capsys):
    archive = tmp_path / "archive"
    archive.mkdir()
    address = f"127.0.0.1:{free_port()}"
    code = main(["reanalyze", "--source", f"folder:{archive}", "--state", str(tmp_path / "s.sqlite"),
                 "--no-progress", "--engine", "ray", "--ray-address", address])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"branet reanalyze: cannot reach the Ray cluster at {address}: connection refused"], err


def test_ray_options_need_the_ray_engine(tmp_path, capsys):
    code = main(["reanalyze", "--source", f"folder:{tmp_path}", "--ray-address", "127.0.0.1:6379"])
    assert code == 2
    assert "--ray-address and --cpus-per-worker go with --engine ray" in capsys.readouterr().err


@pytest.mark.parametrize("address", ["head-without-port", "ray://:10001"])
def test_a_malformed_ray_address_is_named(tmp_path, capsys, address):
    code = main(["reanalyze", "--source", f"folder:{tmp_path}", "--state", str(tmp_path / "s.sqlite"),
                 "--no-progress", "--engine", "ray", "--ray-address", address])
    assert code == 2
    assert f"--ray-address wants HOST:PORT (or ray://HOST:PORT), got {address!r}" in capsys.readouterr().err

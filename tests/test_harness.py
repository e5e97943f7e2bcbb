"""The test harness's own helpers, on real child processes."""

import os
import subprocess
import sys

import psutil

from tests.harness import is_gone, live_children, wait_until


def test_a_reaped_child_is_gone_and_not_listed():
    # CI once listed a consumer that was reaped before its status was read.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    looked_up = psutil.Process(child.pid)
    child.wait()
    assert is_gone(looked_up) is True
    assert child.pid not in {c.pid for c in live_children(os.getpid())}


def test_a_running_child_is_listed_and_a_zombie_is_not():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    looked_up = psutil.Process(child.pid)
    try:
        assert is_gone(looked_up) is False
        assert child.pid in {c.pid for c in live_children(os.getpid())}
        child.kill()
        wait_until(lambda: looked_up.status() == psutil.STATUS_ZOMBIE, timeout=10, message="a zombie")
        assert is_gone(looked_up) is True
        assert child.pid not in {c.pid for c in live_children(os.getpid())}
    finally:
        child.kill()
        child.wait()

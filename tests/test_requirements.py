"""``requirements.txt`` alone runs the service.

The suite's own venv also holds ``requirements-dev.txt``, which pulls in
packages that ``requirements.txt`` may lack (``make run`` once failed on a
fresh clone: gunicorn's gevent worker imports ``packaging``, which only its
``gevent`` extra installs). So a fresh venv gets ``requirements.txt`` only and
loads every process's entry point and the API's worker class in it.
"""

import os
import subprocess
import sys

from tests.harness import ROOT

ENTRY_POINTS = ("api.app", "api.gunicorn_conf", "workers.pool", "workers.consumer", "sharding.coordinator",
                "sharding.embedded_redis", "sharding.local_cluster")


def test_requirements_txt_alone_loads_every_entry_point_and_the_worker_class(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", os.path.join(ROOT, "requirements.txt")], check=True, timeout=600,
                   capture_output=True)
    code = ("import importlib, gunicorn.util\n"
            f"for name in {ENTRY_POINTS!r}: importlib.import_module(name)\n"
            "gunicorn.util.load_class('api.worker.DeadlineWorker', section='gunicorn.workers')\n"
            "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(PYTHONPATH=ROOT, TIMER_DATA_DIR=str(tmp_path / "var"))
    done = subprocess.run([python, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr

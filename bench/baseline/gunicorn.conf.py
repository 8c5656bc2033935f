"""gunicorn settings for the Flask baseline (bench/baseline/app.py), as bench/serve.py runs it.

The textbook set-up: sync workers, 2 x cores + 1 of them, bound to loopback behind nginx.
bench/serve.py sets BASELINE_BIND (127.0.0.1:<free port>), BASELINE_SITE and, optionally,
BASELINE_WORKERS; everything else is fixed here.
"""

import multiprocessing
import os
from pathlib import Path

wsgi_app = "app:create_app()"
pythonpath = str(Path(__file__).resolve().parent)  # app.py itself puts the repo on sys.path
bind = os.environ.get("BASELINE_BIND", "127.0.0.1:8000")
worker_class = "sync"
workers = int(os.environ.get("BASELINE_WORKERS") or 2 * multiprocessing.cpu_count() + 1)
preload_app = False  # each worker imports the app and builds its own view, as usual
accesslog = None  # no per-request log (our nginx runs with access_log off too)
errorlog = "-"
loglevel = "warning"
timeout = 30
graceful_timeout = 5  # the bench stops the master by PID; workers get 5 s to finish
keepalive = 2  # ignored by sync workers, which close every connection
proc_name = "bench-baseline"

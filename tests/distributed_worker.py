"""``rspo`` CLI whose training processes kill themselves (SIGKILL) after optimizer step K.

Run in place of ``-m rspo`` under ``accelerate launch`` by tests/test_train_multiproc.py:
``... accelerate.commands.launch ... tests/distributed_worker.py K --threads 2 train ...``. Every
process dies at the same point, after step K and its checkpoint (if any), as when a job is killed.
Not a test module (no ``test_`` prefix).
"""

from __future__ import annotations

import functools
import os
import signal
import sys

import rspo.train
from rspo.cli import main


def kill_after(k: int):
    def on_step(step, model):
        if step == k:
            os.kill(os.getpid(), signal.SIGKILL)

    return on_step


if __name__ == "__main__":
    rspo.train.train = functools.partial(rspo.train.train, on_step=kill_after(int(sys.argv[1])))
    sys.exit(main(sys.argv[2:]))

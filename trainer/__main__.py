"""``python -m trainer ARGS`` = ``fluxrec train ARGS``: the entry of one worker.

``fluxrec train --workers N`` starts N of these on one machine; ``torchrun`` starts them
on several (it sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``)::

    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d \\
        --rdzv-endpoint HOST0:29400 -m trainer --config fluxrec.yaml
"""

from __future__ import annotations

import sys

from fluxrec.cli import main

if __name__ == "__main__":
    from trainer.distributed import follow_launcher

    follow_launcher()
    sys.exit(main(["train", *sys.argv[1:]]))

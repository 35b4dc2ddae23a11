"""The demo's trainer process: ``fluxrec train`` after a warm-up of the exporter's codec.

``python -m demo.train [fluxrec train arguments]``

The exporter encodes with pyarrow, whose first use in a process imports pandas when it is
installed (seconds on a machine without a bytecode cache); paid before the trainer
starts, that cost does not hold back the run's first parameter version.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from fluxrec.cli import main as cli_main
    from serving.server import warm_up

    warm_up()
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

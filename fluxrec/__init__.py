"""fluxrec: streaming online learning for recommendation and ads models.

Packages::

    fluxrec       config, CLI (``fluxrec``), the one-machine stack
    pipelines     PyFlink jobs (sources, sinks, watermarks, submission)
    sample_join   event and sample contracts, validation and label logic
    trainer       the continuous PyTorch training daemon
    exporter      incremental parameter deltas and the delta consumer SDK

Importing ``fluxrec`` is cheap: no torch, no pyflink.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]

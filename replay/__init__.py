"""Event sources: replay impression and action events into Kafka (synthetic or real logs).

``fluxrec replay`` (:mod:`replay.cli`) runs :func:`replay.run.run_replay`::

    source (synthetic | table | taobao)              replay/sources.py, SOURCES.md
      -> Impression / Action records, event-time order   replay/types.py
      -> limit, run id, time shift (now | none | live)    replay/stream.py
      -> JSON events keyed by request_id (+ faults)       replay/faults.py
      -> Kafka (kafka-python) or JSON lines               replay/produce.py

Errors: :mod:`replay.errors`. Config: ``replay:`` (:mod:`replay.settings`). Nothing heavy
is imported here.
"""

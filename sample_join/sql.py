"""The Flink SQL of the sample-join job, generated from :class:`JoinConfig` (plain strings).

The per-record work runs in Java (``flink-functions/``, built by ``make deps``, shipped in
``pipeline.jars``); SQL wires it together. With ``P`` the table prefix::

    Kafka ─► P_imp: the format fluxrec-event parses each value once, in the source, ──────┐
                    into the row fluxrec_join takes (no operator copies it on the way)     │
    Kafka ─► P_act: the same for actions                                                  │
        valid ─► P_act_dedup = fluxrec_dedup_actions(partitioned by request_id, item_id):│
                 first arrival per (request_id, item_id, action), too_late               │
                   unique ─► P_act_scored = fluxrec_bot_count(partitioned by user_id):   │
                             the user's actions in the bot window, verdict bot or none   │
        invalid, duplicate, too_late, scored ─────────────────────────────────────────── P_events
    P_out = fluxrec_join(P_events, partitioned by request_id, item_id)
        impression dedup, too_late, the match of every label, samples (window: on a timer;
        fake_negative: at once, plus corrections), dead letters, one count row per fact
    P_out ─► records: samples (kind 1) and dead letters (kind 2), one sink writing two topics
          ─► metrics: counts per (window, code), running totals, an upsert changelog

``P_imp`` and ``P_act`` are the parsed events (:data:`IMPRESSION_COLUMNS`,
:data:`ACTION_COLUMNS`, and a rowtime from ``t``): Kafka tables of the format
``fluxrec-event`` (:func:`source_columns`, :meth:`JoinSql.format_options`), or, over a
table of raw payloads that is not Kafka (the benchmark's datagen), views that call the
scalar functions ``fluxrec_impression``/``fluxrec_action`` (:meth:`JoinSql.raw_views`): the
same values. A valid impression's row carries its payload and ``spans``, where the sample's
fields stand in it (48 bytes), not a copy of those fields; ``fluxrec_join`` writes the
sample's fields from the payload once.

The contracts and the semantics are in ``CONTRACTS.md``; the executable reference of the
same semantics is :mod:`sample_join.reference`. Outputs are rows ``(topic STRING, k STRING,
v STRING)`` (records) and ``(k STRING, v STRING)`` (metrics): topic, Kafka key, JSON value.

Every stateful function sees the job's watermark (the minimum over both topics):
``fluxrec_dedup_actions`` gets the impressions' watermark through a union with the
impressions filtered to no rows, dead-letters actions at or behind it (``too_late``), and so
the bot count, which waits for the watermark to pass its rows, never meets a late one;
``fluxrec_join`` dead-letters impressions at or behind its own watermark. The process table
functions are called without ``on_time``: Flink 2.2 silently drops rows at or behind the
watermark before a function with ``on_time`` sees them, and these must see them to
dead-letter them; watermarks and event-time timers work without it. The functions read the
join settings from the job parameter ``fluxrec.join.spec`` (:meth:`JoinSql.spec`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from sample_join.settings import JoinConfig, check_join_config

__all__ = [
    "ACTION_COLUMNS",
    "FUNCTIONS",
    "IMPRESSION_COLUMNS",
    "SPEC_PARAMETER",
    "JoinSql",
    "interval",
    "literal",
    "rowtime_columns",
    "source_columns",
]

#: The job parameter the Java functions read their settings from.
SPEC_PARAMETER = "fluxrec.join.spec"

#: SQL name -> Java class of every function of ``flink-functions/``.
FUNCTIONS = {
    "fluxrec_impression": "io.fluxrec.flink.ParseEvent$Impression",
    "fluxrec_action": "io.fluxrec.flink.ParseEvent$Action",
    "fluxrec_event_time": "io.fluxrec.flink.ParseEvent$EventTime",
    "fluxrec_dedup_actions": "io.fluxrec.flink.DedupActions",
    "fluxrec_bot_count": "io.fluxrec.flink.BotCount",
    "fluxrec_join": "io.fluxrec.flink.SampleJoin",
    "fluxrec_metric": "io.fluxrec.flink.MetricRecord",
}


def interval(ms: int) -> str:
    """A SQL interval literal for ``ms`` milliseconds (< 100 days).

    ``interval(300_500)`` is ``INTERVAL '0 00:05:00.500' DAY TO SECOND(3)``.
    """
    sec, milli = divmod(ms, 1000)
    mins, s = divmod(sec, 60)
    hours, m = divmod(mins, 60)
    d, h = divmod(hours, 24)
    return f"INTERVAL '{d} {h:02d}:{m:02d}:{s:02d}.{milli:03d}' DAY TO SECOND(3)"


def literal(text: str) -> str:
    """A SQL string literal: ``literal("it's")`` is ``'it''s'``."""
    return "'" + text.replace("'", "''") + "'"


#: The columns of the parsed impressions (``P_imp``): exactly the rows ``fluxrec_join``
#: takes, so that nothing stands between the source and the shuffle. ``spans`` is null and
#: ``reason`` set for an invalid impression; ``label`` is always null.
IMPRESSION_COLUMNS = (
    "is_action BOOLEAN, payload STRING, reason STRING, t BIGINT, request_id STRING, "
    "item_id STRING, spans BYTES, label INT"
)

#: The columns of the parsed actions (``P_act``); ``label`` indexes the configured labels.
ACTION_COLUMNS = (
    "payload STRING, reason STRING, t BIGINT, request_id STRING, item_id STRING, "
    "user_id STRING, label INT"
)


def rowtime_columns(cfg: JoinConfig, t: str = "t") -> str:
    """The rowtime ``et`` of a table of events whose event time is the expression ``t`` (null:
    none parsed), and its watermark: ``fluxrec_event_time`` gives 0 for a missing or future
    time, so that such events cannot move the watermark."""
    return (
        f"et AS TO_TIMESTAMP_LTZ(fluxrec_event_time({t}, {cfg.max_future_skew_ms}), 3),\n"
        f"  WATERMARK FOR et AS et - {interval(cfg.watermark_out_of_orderness_ms)}"
    )


def source_columns(cfg: JoinConfig, stream: str) -> str:
    """The columns of the Kafka table of ``stream`` (``impression`` or ``action``) in the
    format ``fluxrec-event``, with its rowtime and watermark."""
    columns = IMPRESSION_COLUMNS if stream == "impression" else ACTION_COLUMNS
    return f"{columns},\n  {rowtime_columns(cfg)}"


@dataclass(frozen=True)
class JoinSql:
    """The statements of one job: :meth:`functions` before the source tables, then
    :meth:`views`; :meth:`records_select` feeds the sink of the samples and dead letters
    (rows ``(topic, k, v)``), :meth:`metrics_select` the metrics sink (rows ``(k, v)``).
    The job parameter :data:`SPEC_PARAMETER` must be
    :meth:`spec_parameter`."""

    cfg: JoinConfig
    prefix: str = "fj"

    def __post_init__(self) -> None:
        check_join_config(self.cfg)

    def _v(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def spec(self) -> str:
        """The settings the functions need, as JSON (``JoinSpec.java`` reads it)."""
        cfg = self.cfg
        doc = {
            "labels": [[s.name, s.action, s.window_ms] for s in cfg.labels],
            "strategy": cfg.strategy,
            "late_action_policy": cfg.late_action_policy,
            "late_horizon_ms": cfg.late_horizon_ms,
            "max_future_skew_ms": cfg.max_future_skew_ms,
            "metrics_window_ms": cfg.metrics_window_ms,
            "bot_max_actions": cfg.bot_max_actions,
            "bot_window_ms": cfg.bot_window_ms,
            "dedup_ttl_ms": cfg.dedup_ttl_ms,
        }
        return json.dumps(doc, ensure_ascii=False)

    def spec_base64(self) -> str:
        """:meth:`spec` as the functions and the format read it: base64 of its UTF-8."""
        return base64.b64encode(self.spec().encode()).decode()

    def spec_parameter(self) -> str:
        """``pipeline.global-job-parameters`` carrying the spec (base64: no ``,`` or ``:``)."""
        return f"{SPEC_PARAMETER}:{self.spec_base64()}"

    def format_options(self, stream: str) -> dict[str, str]:
        """The options of a Kafka table of ``stream`` (``impression`` or ``action``) whose
        values the format ``fluxrec-event`` parses (``EventFormat.java``)."""
        return {
            "format": "fluxrec-event",
            "fluxrec-event.stream": stream,
            "fluxrec-event.spec": self.spec_base64(),
        }

    @staticmethod
    def functions() -> list[str]:
        """``CREATE TEMPORARY SYSTEM FUNCTION`` statements for the functions' jar."""
        return [
            f"CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS {name} AS '{cls}' LANGUAGE JAVA"
            for name, cls in FUNCTIONS.items()
        ]

    # ------------------------------------------------------------------ views

    def raw_views(self) -> list[tuple[str, str]]:
        """``(name, query)`` of ``P_imp`` and ``P_act`` over tables of raw payloads
        ``P_imp_raw``/``P_act_raw`` (a ``payload`` column and a rowtime) that are not Kafka:
        one call of the parse function per payload, the same rows as the format gives."""
        p = self._v
        return [
            (
                p("imp"),
                "SELECT FALSE AS is_action, payload, e.reason, e.t, e.request_id, e.item_id, "
                "e.spans, CAST(NULL AS INT) AS label FROM ("
                f"SELECT payload, fluxrec_impression(payload) AS e FROM {p('imp_raw')})",
            ),
            (
                p("act"),
                "SELECT payload, e.reason, e.t, e.request_id, e.item_id, e.user_id, e.label "
                f"FROM (SELECT payload, fluxrec_action(payload) AS e FROM {p('act_raw')})",
            ),
        ]

    def views(self) -> list[tuple[str, str]]:
        """``(name, query)`` of every view over ``P_imp`` and ``P_act``, in dependency order.
        The job registers them as Table objects (``create_temporary_view``): a SQL view that
        calls a process table function is parsed again when used, which Flink 2.2 fails on."""
        p = self._v
        bots = self.cfg.bot_max_actions > 0
        out: list[tuple[str, str]] = [
            # the valid actions, and the impressions' watermark: the clock rows are none
            # (RAND() is below 1) but their watermark flows, so that the dedup sees the job's
            (
                p("act_valid"),
                "SELECT payload, request_id, item_id, user_id, label, t "
                f"FROM {p('act')} WHERE reason IS NULL UNION ALL "
                "SELECT CAST(NULL AS STRING), CAST(NULL AS STRING), CAST(NULL AS STRING), "
                "CAST(NULL AS STRING), CAST(NULL AS INT), CAST(NULL AS BIGINT) "
                f"FROM {p('imp')} WHERE RAND() > 1",
            ),
            (
                p("act_dedup"),
                f"""
SELECT verdict, payload, t, request_id, item_id, user_id, label
FROM fluxrec_dedup_actions(
  acts => TABLE {p("act_valid")} PARTITION BY (request_id, item_id),
  uid => '{p("dedup_actions")}')""",
            ),
        ]
        unique = f"{p('act_dedup')} WHERE verdict IS NULL"
        if bots:
            out.append(
                (
                    p("act_unique"),
                    f"SELECT payload, request_id, item_id, user_id, label, t FROM {unique}",
                )
            )
            out.append((
                p("act_scored"),
                f"""
SELECT verdict, payload, t, request_id, item_id, label
FROM fluxrec_bot_count(
  acts => TABLE {p("act_unique")} PARTITION BY user_id, uid => '{p("bot_count")}')""",
            ))  # fmt: skip
        scored = p("act_scored") if bots else unique
        no_spans = "CAST(NULL AS BYTES)"
        out.append((
            p("events"),
            f"""
SELECT is_action, payload, reason, t, request_id, item_id, spans, label FROM {p("imp")}
UNION ALL
SELECT TRUE, payload, reason, t, request_id, item_id, {no_spans}, label
FROM {p("act")} WHERE reason IS NOT NULL
UNION ALL
SELECT TRUE, payload, verdict, t, request_id, item_id, {no_spans}, label
FROM {p("act_dedup")} WHERE verdict IS NOT NULL
UNION ALL
SELECT TRUE, payload, verdict, t, request_id, item_id, {no_spans}, label FROM {scored}""",
        ))  # fmt: skip
        out.append((
            p("out"),
            f"""
SELECT * FROM fluxrec_join(
  events => TABLE {p("events")} PARTITION BY (request_id, item_id),
  uid => '{p("join")}')""",
        ))  # fmt: skip
        return out

    # ------------------------------------------------------------------ outputs

    def records_select(self, samples_topic: str, dead_letter_topic: str) -> str:
        """Rows ``(topic, k, v)`` for one Kafka sink writing two topics: samples and
        corrections to ``samples_topic``, dead letters (CONTRACTS.md section 3) to
        ``dead_letter_topic``. One sink, not one per topic: each row the join emits is then
        copied to two consumers (this and the metrics), not three, and one producer commits a
        transaction per checkpoint."""
        samples, dead = literal(samples_topic), literal(dead_letter_topic)
        return (
            f"SELECT CASE WHEN kind = 1 THEN {samples} ELSE {dead} END, k, v "
            f"FROM {self._v('out')} WHERE kind > 0"
        )

    def metrics_select(self) -> str:
        """Rows ``(k, v)`` for the metrics topic, an upsert changelog: the newest value of a
        key is the running total of one (window, stream, kind, reason) (CONTRACTS.md 5).
        Counted on the typed (window, code) columns; the strings are made per total."""
        return f"""
SELECT m.r.k, m.r.v FROM (
  SELECT fluxrec_metric(mq, mc, n) AS r FROM (
    SELECT mq, mc, COUNT(*) AS n FROM {self._v("out")} GROUP BY mq, mc)) m
"""

"""The Flink SQL of the sample-join job, generated from :class:`JoinConfig` (plain strings).

Layout of the generated views (``P`` = the table prefix)::

    P_imp_raw / P_act_raw   Kafka sources, one STRING column ``payload`` (format raw),
                            ``et`` rowtime parsed from $.event_time_ms (0 when unparseable),
                            ``pt`` proctime; watermark ``et - out_of_orderness``
    P_imp_checked / ..      payload + parsed fields + ``reason`` (NULL = valid)
    P_imp_unique            first arrival per (request_id, item_id)       (proctime dedup)
    P_act_unique            first arrival per (request_id, item_id, action)
    P_labelled              impression LEFT JOIN one interval join per label (strategy window)

Example: for labels ``click`` (300 s) the label part of the join reads
``LEFT JOIN P_act_click c ON c.request_id = i.request_id AND c.item_id = i.item_id AND
c.et BETWEEN i.et AND i.et + INTERVAL '300' SECOND(6, 3)``... (milliseconds as seconds).
"""

from __future__ import annotations

from sample_join.settings import JoinConfig

__all__ = [
    "checked_view_sql",
    "dead_letter_select_sql",
    "interval",
    "label_select_sql",
    "unique_view_sql",
]

_INT = r"^\[-?[0-9]+\]$"
_STR = r'^\["'


def interval(ms: int) -> str:
    """A SQL interval literal for ``ms`` milliseconds (< 100 days).

    ``interval(300_500)`` is ``INTERVAL '0 00:05:00.500' DAY TO SECOND(3)``.
    """
    sec, milli = divmod(ms, 1000)
    mins, s = divmod(sec, 60)
    hours, m = divmod(mins, 60)
    d, h = divmod(hours, 24)
    return f"INTERVAL '{d} {h:02d}:{m:02d}:{s:02d}.{milli:03d}' DAY TO SECOND(3)"


def _typed(field: str, regex: str) -> str:
    return f"REGEXP(JSON_QUERY(payload, '$.{field}' WITH WRAPPER NULL ON ERROR), '{regex}')"


def checked_view_sql(prefix: str, stream: str, cfg: JoinConfig) -> str:
    """``CREATE TEMPORARY VIEW P_<imp|act>_checked``: every raw event with its ``reason``."""
    short = "imp" if stream == "impression" else "act"
    if stream == "impression":
        strings = ["request_id", "item_id", "user_id"]
        extra_missing = " OR NOT JSON_EXISTS(payload, '$.features')"
        extra_type = (
            " OR NOT REGEXP(JSON_QUERY(payload, '$.features' WITH WRAPPER NULL ON ERROR),"
            " '^\\[\\{')"
        )
        unknown = ""
    else:
        strings = ["request_id", "item_id", "action"]
        extra_missing = extra_type = ""
        actions = ", ".join(f"'{s.action}'" for s in cfg.labels)
        unknown = (
            f"      WHEN JSON_VALUE(payload, '$.action') NOT IN ({actions}) THEN 'unknown_action'\n"
        )
    fields = ["v", *strings, "event_time_ms"]
    missing = " OR ".join(f"JSON_VALUE(payload, '$.{f}' NULL ON ERROR) IS NULL" for f in fields)
    missing = " OR ".join(
        f"(NOT JSON_EXISTS(payload, '$.{f}') OR "
        f"JSON_QUERY(payload, '$.{f}' WITH WRAPPER NULL ON ERROR) = '[null]')"
        for f in fields
    )
    bad = " OR ".join(f"NOT {_typed(f, _STR)}" for f in strings)
    bad += f" OR NOT {_typed('event_time_ms', _INT)} OR NOT {_typed('v', _INT)}" + extra_type
    cols = ", ".join(f"JSON_VALUE(payload, '$.{f}') AS {f}" for f in strings)
    late = cfg.allowed_lateness_ms
    return f"""
CREATE TEMPORARY VIEW {prefix}_{short}_checked AS
SELECT payload, et, pt, {cols},
  TRY_CAST(JSON_VALUE(payload, '$.event_time_ms' NULL ON ERROR) AS BIGINT) AS event_time_ms,
  CASE
      WHEN NOT (payload IS JSON OBJECT) THEN 'malformed_json'
      WHEN {missing}{extra_missing} THEN 'missing_field'
      WHEN {bad} THEN 'bad_type'
      WHEN TRY_CAST(JSON_VALUE(payload, '$.v' NULL ON ERROR) AS BIGINT) <> 1
        THEN 'unsupported_version'
{unknown}      WHEN et > CURRENT_TIMESTAMP + {interval(cfg.max_future_skew_ms)} THEN 'future_event'
      WHEN et < CURRENT_WATERMARK(et) - {interval(late)} THEN 'too_late'
      ELSE CAST(NULL AS STRING)
  END AS reason
FROM {prefix}_{short}_raw
"""


def dead_letter_select_sql(prefix: str, stream: str) -> str:
    """Rows ``(k, v)`` for the dead-letter sink from one checked view."""
    short = "imp" if stream == "impression" else "act"
    return f"""
SELECT CAST(NULL AS STRING) AS k,
  '{{"v":1,"stream":"{stream}","reason":"' || reason || '","stage":"validate","payload":'
    || JSON_STRING(payload) || '}}' AS v
FROM {prefix}_{short}_checked WHERE reason IS NOT NULL
"""


def unique_view_sql(prefix: str, stream: str) -> str:
    """``CREATE TEMPORARY VIEW P_<imp|act>_unique``: valid events, first arrival per key."""
    short = "imp" if stream == "impression" else "act"
    key = "request_id, item_id" + ("" if stream == "impression" else ", action")
    return f"""
CREATE TEMPORARY VIEW {prefix}_{short}_unique AS
SELECT * FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY pt ASC) AS rn
  FROM {prefix}_{short}_checked WHERE reason IS NULL
) WHERE rn = 1
"""


def label_select_sql(prefix: str, cfg: JoinConfig) -> str:
    """Rows ``(k, v)`` for the samples sink: strategy ``window``, one LEFT interval join
    per label."""
    joins = []
    labels = []
    times = []
    for n, spec in enumerate(cfg.labels):
        a = f"a{n}"
        joins.append(
            f"LEFT JOIN (SELECT request_id, item_id, event_time_ms, et FROM {prefix}_act_unique"
            f" WHERE action = '{spec.action}') {a}\n"
            f"  ON {a}.request_id = i.request_id AND {a}.item_id = i.item_id"
            f" AND {a}.et BETWEEN i.et AND i.et + {interval(spec.window_ms)}"
        )
        labels.append(
            f"\"{spec.name}\":' || CASE WHEN {a}.request_id IS NULL THEN '0' ELSE '1' END"
        )
        times.append(f"\"{spec.name}\":' || COALESCE(CAST({a}.event_time_ms AS STRING), 'null')")
    label_json = " || ',".join(labels)
    time_json = " || ',".join(times)
    sid = "i.request_id || '|' || i.item_id || '|0'"
    return f"""
SELECT {sid} AS k,
  '{{"v":1,"sample_id":' || JSON_STRING({sid})
  || ',"request_id":' || JSON_STRING(i.request_id)
  || ',"item_id":' || JSON_STRING(i.item_id)
  || ',"user_id":' || JSON_STRING(i.user_id)
  || ',"event_time_ms":' || CAST(i.event_time_ms AS STRING)
  || ',"features":' || JSON_QUERY(i.payload, '$.features')
  || ',"labels":{{{label_json} || '}}'
  || ',"label_time_ms":{{{time_json} || '}}'
  || ',"strategy":"window","correction":false'
  || COALESCE(',"p_click":' || JSON_VALUE(i.payload, '$.p_click'), '')
  || '}}' AS v
FROM {prefix}_imp_unique i
{chr(10).join(joins)}
"""

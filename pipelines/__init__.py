"""PyFlink jobs. Each job is a function of (table environment, config) so tests can run it.

``pipelines.smoke``: Kafka -> Flink SQL -> Kafka, the stack's end-to-end check.
"""

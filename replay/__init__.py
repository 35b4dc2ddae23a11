"""Event sources: replay impression and action events into Kafka (synthetic or real logs)."""

"""Event and sample contracts, validation rules and label semantics (plain, testable code)."""

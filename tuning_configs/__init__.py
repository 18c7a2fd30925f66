"""Per-device tuned configurations (YAML), shipped as package data."""

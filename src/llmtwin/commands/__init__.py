"""CLI command groups that live outside cli.py; cli.py wires each in (see the marked block there)."""

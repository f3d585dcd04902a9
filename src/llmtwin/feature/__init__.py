"""feature stage."""

"""Small shared utilities (rotation conversions, command lines)."""

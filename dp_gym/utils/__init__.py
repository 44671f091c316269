"""Small shared utilities (rotation conversions)."""

"""shoal client."""

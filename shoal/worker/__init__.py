"""shoal worker."""

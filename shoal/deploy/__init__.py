"""Launching shoal: the command line and local clusters."""

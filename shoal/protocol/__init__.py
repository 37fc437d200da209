"""The wire protocol: bytes <-> messages. Nothing here knows about tasks.

See docs/protocol.md for the byte layout this package implements.
"""

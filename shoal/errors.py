"""Every exception class shoal raises, in one place.

Three families: bad bytes or a misbehaving peer (ProtocolError and its
children), user data that cannot cross the wire (SerializationError), and a
connection that is gone (CommClosedError).
"""


class ShoalError(Exception):
    """Base class of all shoal errors."""


class ProtocolError(ShoalError):
    """Bytes or messages from a peer broke the wire protocol.

    The connection they came on is closed; the process keeps serving others.
    """


class LimitExceeded(ProtocolError):
    """A count or length on the wire is over a configured limit."""


class HandshakeError(ProtocolError):
    """The opening exchange failed: wrong or missing token, incompatible version."""


class MessageTooLarge(ShoalError):
    """A message we were asked to send is over the limits the peer advertised."""


class SerializationError(ShoalError):
    """A user object could not be pickled or unpickled.

    The message names the object's type and what it belonged to.
    """


class CommClosedError(ShoalError):
    """The connection is closed; the message says why when it is known."""

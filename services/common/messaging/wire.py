"""One socket write for many AMQP frames; a connection dropped without AMQP's handshake.

amqp writes every frame with its own ``sendall``: a publish, an ack, each is a
system call, and on the loopback interface each also wakes the broker. A batch
of publishes or a run of acks that is ready at once can go out as one write:
the frames are the same and in the same order, only the TCP segments differ.
"""
from contextlib import contextmanager


@contextmanager
def coalesced_writes(amqp_connection):
    """Frames written on ``amqp_connection`` inside the block leave in one write at its end.

    The block must not wait for the broker (nothing it writes has left yet).
    If the connection has no transport, or amqp's transport changes shape,
    frames are written as usual.
    """
    transport = getattr(amqp_connection, "transport", None)
    write = getattr(transport, "_write", None)  # amqp 5: the socket's sendall
    if write is None:
        yield
        return
    chunks = []
    # amqp hands over a view of a buffer it reuses for the next frame: copy it
    transport._write = lambda data: chunks.append(bytes(data))
    try:
        yield
    finally:
        transport._write = write
        if chunks:
            write(b"".join(chunks))


def drop(connection):
    """Close a kombu ``connection``'s socket without AMQP's close handshake (kombu's ``collect``).

    For a broker that does not answer: AMQP's own close waits for its
    close-ok with no timeout. A connection already broken is fine.
    """
    try:
        connection.collect()
    except Exception:
        pass

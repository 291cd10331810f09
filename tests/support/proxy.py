"""A TCP proxy a test can cut and restore, to stage a broker or database outage.

The RabbitMQ and PostgreSQL servers on a development machine or CI runner are
shared (other test runs use them at the same time), so a test must not stop
them. Services under test connect through this proxy instead; ``cut()``
closes every connection it carries and then resets each new one at once,
which is what a client sees when the server goes down and refuses
connections until it is back; ``restore()`` forwards again. ``freeze()``
stages a network partition instead: every connection stays open, and
nothing said on it arrives.

It runs as green threads inside the (eventlet-patched) test process.
"""
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

from tests.support import free_port


class TcpProxy:
    def __init__(self, target_host, target_port, listen_port=None):
        self.target = (target_host, target_port)
        self.port = listen_port or free_port()
        self._open = True
        self._frozen = False
        self._pairs = set()
        self._lock = threading.Lock()
        self._listener = None
        self._running = False
        self._stopped = threading.Event()
        self.connections = 0

    def start(self):
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(128)
        self._running = True
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def stop(self):
        self._running = False
        self.cut()
        try:  # wake the accept loop so that it closes the listener itself
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        self._stopped.wait(5)

    def cut(self):
        """Drop every carried connection; refuse new ones until restore()."""
        self._open = False
        with self._lock:
            pairs, self._pairs = list(self._pairs), set()
        for pair in pairs:
            for sock in pair:
                # only shut down: the pump blocked on it wakes up and closes
                # it (closing a socket another green thread waits on leaves
                # a stale listener in eventlet's hub)
                _shutdown(sock)

    def freeze(self):
        """Carry nothing more either way, keeping every connection open; refuse new ones.

        A network partition as the two ends see it: their writes succeed,
        no answer comes, and no error either.
        """
        self._open = False
        self._frozen = True

    def restore(self):
        self._open = True

    def _accept_loop(self):
        try:
            self._serve()
        finally:
            self._listener.close()
            self._stopped.set()

    def _serve(self):
        while self._running:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._running or not self._open:
                _close(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            self.connections += 1
            pair = (client, server)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(client, server, pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, pair), daemon=True).start()

    def _pump(self, source, sink, pair):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if not self._frozen:
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._pairs.discard(pair)
            _shutdown(sink)  # wakes the pump of the other direction, which closes it
            _close(source)


def _shutdown(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _close(sock):
    _shutdown(sock)
    try:
        sock.close()
    except OSError:
        pass


def proxied(uri, default_port):
    """A started proxy to the server ``uri`` names, and the same URI pointed at the proxy."""
    parts = urlsplit(uri)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or default_port).start()
    userinfo = parts.netloc.rsplit("@", 1)[0]
    return proxy, urlunsplit(parts._replace(netloc="{}@127.0.0.1:{}".format(userinfo, proxy.port)))

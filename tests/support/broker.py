"""A private RabbitMQ node that a test starts, stops and starts again.

The RabbitMQ on a development machine or CI runner is shared with other test
runs and must never be stopped, so a test that needs a real broker restart
runs its own node: a second ``rabbitmq-server`` as the current OS user, with
its own node name, ports, Erlang cookie, data, logs and configuration, all
under the test's temporary directory. Nothing in /etc/rabbitmq,
/var/lib/rabbitmq or the user's home is read or written.

``stop()`` is a real, orderly broker shutdown (``rabbitmqctl shutdown``) and
``start()`` boots the node again on the same data directory, so durable
queues and persistent messages either survive it or visibly do not.
"""
import json
import os
import secrets
import shutil
import signal
import string
import subprocess

import amqp
import pytest

from tests.support import GiveUp, eventually, free_port

# Debian and Ubuntu put su-ing wrappers in /usr/sbin that run the broker as the
# "rabbitmq" user from /var/lib/rabbitmq and log to /var/log/rabbitmq; the real
# scripts, which honour RABBITMQ_* variables as the current user, live here.
PACKAGED_SCRIPTS = "/usr/lib/rabbitmq/bin"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin",
                               "/opt/homebrew/sbin"])


def rabbitmq_script(name):
    """Path of the RabbitMQ script ``name`` to run as the current user; fail if not installed."""
    packaged = os.path.join(PACKAGED_SCRIPTS, name)
    if os.access(packaged, os.X_OK):
        return packaged
    found = shutil.which(name, path=SEARCH_PATH)
    if not found:
        pytest.fail("{} is not installed (looked in {} and on {}): this test starts a private "
                    "RabbitMQ node and needs the RabbitMQ server package".format(
                        name, PACKAGED_SCRIPTS, SEARCH_PATH), pytrace=False)
    return found


class PrivateBroker:
    """One RabbitMQ node of this test's own, on loopback, vhost "/", guest/guest."""

    def __init__(self, base_dir, boot_timeout=90, tls=None):
        # tls: {"cacertfile", "certfile", "keyfile"} (PEM paths) adds a TLS listener on
        # self.tls_port that requires a client certificate signed by that CA
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.server = rabbitmq_script("rabbitmq-server")
        self.ctl = rabbitmq_script("rabbitmqctl")
        self.base = str(base_dir)
        self.boot_timeout = boot_timeout
        self.node = "rabbit-test-{}@localhost".format(secrets.token_hex(4))
        self.port = free_port()
        self.amqp_uri = "amqp://guest:guest@127.0.0.1:{}/".format(self.port)
        self.process = None
        self.starts = 0
        self._output = os.path.join(self.base, "server.out")
        self.env = self._environment()

    def _environment(self):
        home = os.path.join(self.base, "home")
        for directory in (home, os.path.join(self.base, "mnesia"), os.path.join(self.base, "log")):
            os.makedirs(directory, exist_ok=True)
        # the node and rabbitmqctl authenticate to each other with this cookie,
        # not with the user's ~/.erlang.cookie
        cookie = os.path.join(home, ".erlang.cookie")
        with open(cookie, "w") as stream:
            stream.write("".join(secrets.choice(string.ascii_uppercase) for _ in range(20)))
        os.chmod(cookie, 0o400)
        with open(os.path.join(self.base, "enabled_plugins"), "w") as stream:
            stream.write("[].\n")  # no management plugin: port 15672 stays the shared node's
        with open(os.path.join(self.base, "rabbitmq.conf"), "w") as stream:
            # replaces /etc/rabbitmq/rabbitmq.conf, whose listener is the shared node's port
            stream.write("listeners.tcp.1 = 127.0.0.1:{}\n".format(self.port))
            if self.tls:
                stream.write("listeners.ssl.1 = 127.0.0.1:{}\n".format(self.tls_port))
                for key in ("cacertfile", "certfile", "keyfile"):
                    stream.write("ssl_options.{} = {}\n".format(key, self.tls[key]))
                stream.write("ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n")
        open(os.path.join(self.base, "rabbitmq-env.conf"), "w").close()  # not /etc/rabbitmq's

        env = {key: value for key, value in os.environ.items() if not key.startswith("RABBITMQ_")}
        env.update({
            "HOME": home,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": os.path.join(self.base, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(self.base, "log"),
            "RABBITMQ_PID_FILE": os.path.join(self.base, "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.base, "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": os.path.join(self.base, "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(self.base, "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": os.path.join(self.base, "rabbitmq-env.conf"),
            # Erlang distribution on loopback only (an epmd it has to start, too), and
            # no scheduler busy-waiting: the test node must not eat the services' cores
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1} "
                                                   "+sbwt none +sbwtdcpu none +sbwtdio none",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_CRASH_DUMP": os.path.join(self.base, "erl_crash.dump"),
        })
        return env

    # life cycle ----------------------------------------------------------------------

    def start(self):
        """Boot the node (on whatever data it already has) and wait until it takes AMQP logins."""
        assert self.process is None, "the private broker is already running"
        output = open(self._output, "ab")
        try:
            # foreground, in its own session: the script turns SIGTERM into an
            # orderly stop, and teardown can always reach the whole group
            self.process = subprocess.Popen([self.server], cwd=self.base, env=self.env, stdout=output,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            output.close()
        self.starts += 1

        def booted():
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise GiveUp("private RabbitMQ node {} exited with {} while booting:\n{}".format(
                    self.node, code, self.log_tail()))
            return self.answers()

        eventually(booted, timeout=self.boot_timeout, interval=0.25, message=lambda: "private RabbitMQ node {} "
                   "to boot:\n{}".format(self.node, self.log_tail()))
        return self

    def stop(self, timeout=60):
        """Shut the node down the way an operator does, and wait until its process is gone."""
        assert self.process is not None, "the private broker is not running"
        result = self.ctl_run("shutdown", timeout=timeout)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            raise AssertionError("private RabbitMQ node did not stop ({}):\n{}".format(
                result.stdout, self.log_tail()))
        self.process = None
        assert result.returncode == 0, "rabbitmqctl shutdown failed: {}".format(result.stdout)

    def close(self):
        """Teardown: stop the node if it still runs, whatever state the test left it in."""
        if self.process is None:
            return
        try:
            self.ctl_run("shutdown", timeout=30)
            self.process.wait(30)
        except Exception:
            self._kill()
        self.process = None

    def _kill(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)

    # looking at it -------------------------------------------------------------------

    def answers(self):
        """True when an AMQP login on vhost "/" succeeds."""
        connection = amqp.Connection("127.0.0.1:{}".format(self.port), userid="guest", password="guest",
                                     virtual_host="/", connect_timeout=2)
        try:
            connection.connect()
        except Exception:
            try:
                connection.collect()
            except Exception:
                pass
            return False
        connection.close()
        return True

    def ctl_run(self, *args, timeout=60):
        return subprocess.run([self.ctl, "-n", self.node, *args], env=self.env, cwd=self.base,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)

    def queues(self):
        """``{queue name: (durable, messages)}`` as the broker itself counts them."""
        result = self.ctl_run("list_queues", "name", "durable", "messages", "--formatter", "json", "-q")
        assert result.returncode == 0, "rabbitmqctl list_queues failed: {}".format(result.stdout)
        return {row["name"]: (row["durable"], row["messages"]) for row in json.loads(result.stdout)}

    def log_tail(self, lines=60):
        text = []
        for path in (self._output, os.path.join(self.base, "log", self.node + ".log")):
            if os.path.exists(path):
                with open(path, errors="replace") as stream:
                    text.append("--- {}\n{}".format(path, "".join(stream.readlines()[-lines:])))
        return "\n".join(text) or "(no broker output)"

"""A three-node RabbitMQ cluster of the test's own, on this one machine.

Each node is a ``tests.support.broker.PrivateBroker`` (its own node name, AMQP and
distribution ports, data, logs and configuration under the test's temporary
directory, no management plugin); the three share one Erlang cookie, and the
second and third join the first with ``rabbitmqctl join_cluster``. The
shared RabbitMQ of the machine is never touched.

Booting costs most of the time, so the three nodes boot at the same time and
a test module starts one cluster for all its tests; each test gets a vhost
of its own on it (``add_vhost``), so their queues never meet.
"""
import json
import os
import secrets
import string
import threading

from tests.support.broker import PrivateBroker


class ClusterNode(PrivateBroker):
    """A private node whose Erlang cookie is the cluster's, not a random one."""

    def __init__(self, base_dir, cookie, boot_timeout=120):
        self.cookie = cookie
        super().__init__(base_dir, boot_timeout=boot_timeout)

    def _environment(self):
        env = super()._environment()
        path = os.path.join(self.base, "home", ".erlang.cookie")
        os.chmod(path, 0o600)
        with open(path, "w") as stream:
            stream.write(self.cookie)
        os.chmod(path, 0o400)
        return env

    @property
    def running(self):
        return self.process is not None


class RabbitCluster:
    def __init__(self, base_dir, size=3):
        cookie = "".join(secrets.choice(string.ascii_uppercase) for _ in range(20))
        self.nodes = [ClusterNode(os.path.join(str(base_dir), "node{}".format(i + 1)), cookie)
                      for i in range(size)]
        # the services log in as a user of their own, whose password must never reach a log
        self.user = "orders-{}".format(secrets.token_hex(3))
        self.password = "pw-{}".format(secrets.token_hex(8))

    # life cycle ----------------------------------------------------------------------

    def start(self):
        """Boot every node at once, then join the others to the first."""
        errors = []

        def boot(node):
            try:
                node.start()
            except Exception as exc:  # reported below, with the other nodes' outcome
                errors.append(exc)

        threads = [threading.Thread(target=boot, args=(node,)) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        first = self.nodes[0]
        for node in self.nodes[1:]:
            for step in (("stop_app",), ("join_cluster", first.node), ("start_app",)):
                result = node.ctl_run(*step, timeout=120)
                assert result.returncode == 0, "rabbitmqctl {} on {} failed: {}".format(
                    " ".join(step), node.node, result.stdout)
        members = self.running_nodes()
        assert members == {node.node for node in self.nodes}, "cluster did not form: {}".format(members)
        self.ctl("add_user", self.user, self.password)
        return self

    def close(self):
        threads = [threading.Thread(target=node.close) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def ensure_all_running(self):
        """Boot again whatever a test left stopped, so the next test starts on three nodes."""
        for node in self.nodes:
            if not node.running:
                node.start()

    # looking at it -------------------------------------------------------------------

    def any_running(self):
        for node in self.nodes:
            if node.running:
                return node
        raise AssertionError("no node of the cluster is running")

    def node_named(self, name):
        return next(node for node in self.nodes if node.node == name)

    def ctl(self, *args, timeout=60):
        node = self.any_running()
        result = node.ctl_run(*args, timeout=timeout)
        assert result.returncode == 0, "rabbitmqctl {} failed: {}".format(" ".join(args), result.stdout)
        return result.stdout

    def running_nodes(self):
        status = json.loads(self.ctl("cluster_status", "--formatter", "json", "-q"))
        return set(status["running_nodes"])

    def add_vhost(self, vhost):
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, self.user, ".*", ".*", ".*")

    def amqp_uri(self, vhost):
        """Every node, separated by ";": kombu's failover list.

        "localhost", as a host name without a dot would be in a data centre
        (rabbit-1): the services' email masking happens to hide
        ``password@127.0.0.1`` in logs, and must not be what keeps passwords out.
        """
        return ";".join("amqp://{}:{}@localhost:{}/{}".format(self.user, self.password, node.port, vhost)
                        for node in self.nodes)

    def queues(self, vhost):
        """``{name: {"type", "leader", "members", "messages", "durable"}}`` as the cluster reports them."""
        rows = json.loads(self.ctl("list_queues", "-p", vhost, "name", "type", "leader", "members",
                                   "messages", "durable", "--formatter", "json", "-q"))
        return {row["name"]: row for row in rows}

    def leader_of(self, vhost, queue):
        """The node that leads quorum queue ``queue`` (or holds it, for a classic queue)."""
        leader = self.queues(vhost)[queue]["leader"]
        if leader:
            return self.node_named(leader)
        # a classic queue has no leader: it is local to the one node that holds it
        for node in self.nodes:
            if node.running:
                result = node.ctl_run("list_queues", "-p", vhost, "--local", "name", "--formatter", "json", "-q")
                if result.returncode == 0 and queue in {row["name"] for row in json.loads(result.stdout)}:
                    return node
        raise AssertionError("no running node holds {}".format(queue))

    def dead_letters(self, vhost):
        return {name: row["messages"] for name, row in self.queues(vhost).items()
                if name.endswith(".dead-letters") and row["messages"]}

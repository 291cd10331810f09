"""Stopping services: SIGTERM is graceful but bounded, and nothing is lost.

These tests use a tiny service (defined below, run by ``nameko run`` like
the real ones) whose only work is to sleep, so that a worker is certainly
running when the signal arrives. test_shutdown_chaos.py does the same to the
real services while orders keep coming in.
"""
import os
import signal
import subprocess
import sys
import time

import eventlet
import pytest
from nameko.rpc import rpc
from nameko.standalone.rpc import ClusterRpcProxy

from scripts.wait_ready import wait_ready
from services.common.shutdown import GracefulShutdown
from tests.support import eventually

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMEKO = os.path.join(os.path.dirname(sys.executable), "nameko")


class SleepyService:
    """Naps on request and writes down who started and finished each nap."""

    name = "sleepy"
    shutdown = GracefulShutdown()

    @rpc
    def nap(self, seconds, key):
        self._note("start", key)
        eventlet.sleep(seconds)
        self._note("done", key)
        return key

    @rpc
    def ping(self):
        return "pong"

    @staticmethod
    def _note(what, key):
        with open(os.environ["NAP_LOG"], "a") as stream:
            stream.write("{} {} {}\n".format(what, key, os.getpid()))


class Sleepy:
    def __init__(self, rabbit_config, tmp_path, **env):
        self.config = rabbit_config
        self.nap_log = str(tmp_path / "naps.log")
        self.output = str(tmp_path / "sleepy.out")
        self.env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS="ignore", NAP_LOG=self.nap_log,
                        AMQP_URI=rabbit_config["AMQP_URI"], WEB_SERVER_ADDRESS="127.0.0.1:0",
                        **{key: str(value) for key, value in env.items()})
        self.processes = []

    def start(self):
        with open(self.output, "ab") as out:
            process = subprocess.Popen(
                [NAMEKO, "run", "--config", os.path.join(ROOT, "config.yaml"),
                 "tests.e2e.test_shutdown:SleepyService"],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(process)
        assert not wait_ready(self.config, 30, ("sleepy",)), self.log()
        return process

    def naps(self):
        if not os.path.exists(self.nap_log):
            return []
        with open(self.nap_log) as stream:
            return [tuple(line.split()) for line in stream]

    def stop_all(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def log(self):
        with open(self.output, errors="replace") as stream:
            return stream.read()


@pytest.fixture
def sleepy(rabbit_config, tmp_path, request):
    made = []

    def make(**env):
        made.append(Sleepy(rabbit_config, tmp_path, **env))
        return made[-1]

    yield make
    for service in made:
        service.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(service.log())


def exit_within(process, seconds):
    started = time.monotonic()
    try:
        code = process.wait(seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError("still running {}s after the signal".format(seconds))
    return code, time.monotonic() - started


def test_sigterm_lets_the_running_worker_finish_and_leaves_the_queue_for_the_next_process(
        sleepy, rabbit_config):
    service = sleepy(MAX_WORKERS=1, SHUTDOWN_TIMEOUT=15)  # one worker: the rest wait in the queue
    first = service.start()
    with ClusterRpcProxy(rabbit_config, timeout=30) as proxy:
        replies = [proxy.sleepy.nap.call_async(1.5, key) for key in ("a", "b", "c")]
        eventually(lambda: ("start", "a", str(first.pid)) in service.naps(), timeout=10,
                   message="first nap started")

        first.send_signal(signal.SIGTERM)
        assert replies[0].result() == "a"  # the worker in flight finished and answered
        # within 10 s, less than its SHUTDOWN_TIMEOUT of 15: it did not wait for b and c
        # (the naps below show that; no tighter wall-clock bound on a busy machine)
        code, _ = exit_within(first, 10)
        assert code == 0
        assert [nap[:2] for nap in service.naps()] == [("start", "a"), ("done", "a")]  # b, c untouched

        second = service.start()
        assert [reply.result() for reply in replies[1:]] == ["b", "c"]  # they waited in RabbitMQ
    assert {nap[2] for nap in service.naps() if nap[1] in "bc"} == {str(second.pid)}


def test_a_worker_that_outlives_the_shutdown_timeout_is_killed_and_its_message_redelivered(
        sleepy, rabbit_config):
    service = sleepy(MAX_WORKERS=2, SHUTDOWN_TIMEOUT=1)
    first = service.start()
    with ClusterRpcProxy(rabbit_config, timeout=60) as proxy:
        proxy.sleepy.nap.call_async(600, "long")
        eventually(lambda: service.naps(), timeout=10, message="nap started")

        first.send_signal(signal.SIGTERM)
        # the nap lasts 600 s: exiting within 15 s means the worker was killed after the
        # 1 s SHUTDOWN_TIMEOUT (no tighter wall-clock bound on a busy machine)
        exit_within(first, 15)
        assert service.naps() == [("start", "long", str(first.pid))]

        second = service.start()
        eventually(lambda: ("start", "long", str(second.pid)) in service.naps(), timeout=15,
                   message="the unfinished call delivered again")
    assert "killing its workers" in service.log()


def test_outside_nameko_run_the_signal_handlers_are_left_alone(container_factory, rabbit_config, tmp_path,
                                                               monkeypatch):
    monkeypatch.setenv("NAP_LOG", str(tmp_path / "naps.log"))
    before = signal.getsignal(signal.SIGTERM)
    for _ in range(2):  # containers come and go, as in the integration tests
        container = container_factory(SleepyService, rabbit_config)
        container.start()
        assert signal.getsignal(signal.SIGTERM) is before
        container.stop()
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("backend", ["sqlite"])  # broker_proxy's service_config
def test_sigterm_during_a_network_partition_ends_in_a_kill_that_does_not_wait_for_the_broker(
        service_config, broker_proxy, tmp_path):
    """Stopping waits for the broker to cancel the consumers, which a partition never does, so the
    SHUTDOWN_TIMEOUT kill ends it. That kill waited for the broker too (on the code before, a
    process was still running 30 s after the signal); now it drops what the broker leaves
    unanswered, well before the last-resort exit (``did not die``)."""
    from tests.support.system import System

    proxy, uri = broker_proxy
    system = System(dict(service_config, AMQP_URI=uri, SHUTDOWN_TIMEOUT=1), str(tmp_path))
    system.start()
    try:
        proxy.freeze()
        processes = dict(system.processes)
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for (service, _), process in processes.items():
            exit_within(process, 30)
    finally:
        system.stop_all()
    logs = system.logs(tail=400)
    assert "did not die" not in logs, logs
    assert logs.count("dropping the connection") >= 3, logs  # a consumer of each service gave up on it

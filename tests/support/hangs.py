"""On a test timeout, print every greenlet's stack, not only the OS threads'.

The services and the tests run as greenlets of one OS thread, so the
stacks pytest-timeout prints (``sys._current_frames``: one per OS thread)
show only the timer that fired, never what the test was waiting on.
pytest-timeout has no hook for what it prints; this wraps its module-level
``dump_stacks`` (a private function of the plugin, the only place to add to).
"""
import gc
import traceback

import greenlet
import pytest_timeout

FRAMES = 24  # the innermost frames of each greenlet: where it waits, and who asked it to


def dump_greenlets(terminal):
    for obj in gc.get_objects():
        try:
            frame = obj.gr_frame if isinstance(obj, greenlet.greenlet) else None
        except ReferenceError:  # a weak proxy whose referent is gone
            continue
        if frame is not None:
            terminal.sep("~", title="greenlet {}".format(type(obj).__name__))
            terminal.write("".join(traceback.format_stack(frame)[-FRAMES:]))


def install():
    dump_threads = pytest_timeout.dump_stacks

    def dump_stacks(terminal):
        dump_threads(terminal)
        dump_greenlets(terminal)
    pytest_timeout.dump_stacks = dump_stacks

"""Wait until every service answers a ping over RPC (or give up)."""
import argparse
import sys
import time

import eventlet

eventlet.monkey_patch()

from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402

from services.common.settings import load_config  # noqa: E402

SERVICES = ("inventory", "orders", "notifications")


def wait_ready(config, timeout=60.0, services=SERVICES):
    deadline = time.monotonic() + timeout
    waiting = list(services)
    while waiting and time.monotonic() < deadline:
        try:
            with ClusterRpcProxy(config, timeout=2) as rpc:
                while waiting and time.monotonic() < deadline:
                    getattr(rpc, waiting[0]).ping()
                    waiting.pop(0)
        except Exception:
            time.sleep(0.5)
    return waiting


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    missing = wait_ready(load_config(args.config), args.timeout)
    if missing:
        print("not ready after {}s: {}".format(args.timeout, ", ".join(missing)), file=sys.stderr)
        sys.exit(1)
    print("all services ready", file=sys.stderr)


if __name__ == "__main__":
    main()

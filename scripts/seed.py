"""Add a small demo catalogue when inventory has no products yet."""
import argparse
import sys

import eventlet

eventlet.monkey_patch()

from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402

from services.common.settings import load_config  # noqa: E402

DEMO_CATALOGUE = [
    ("WIDGET-1", "Widget", 1999, 100),
    ("GADGET-1", "Gadget", 4999, 25),
    ("GIZMO-1", "Gizmo", 999, 3),
]


def seed(config):
    with ClusterRpcProxy(config, timeout=10) as rpc:
        if rpc.inventory.list_products():
            return 0
        for sku, name, price, stock in DEMO_CATALOGUE:
            rpc.inventory.create_product(sku, name, price, stock)
        return len(DEMO_CATALOGUE)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="config.yaml")
    args = parser.parse_args()
    added = seed(load_config(args.config))
    print("seeded {} demo products".format(added) if added else "catalogue already has products; not seeded",
          file=sys.stderr)


if __name__ == "__main__":
    main()

"""An order's timeline across the three services.

    ./run.sh trace <order id | request id> [--log-dir var/log] [--json]

Built from what the services keep anyway, so it works with nothing but the
databases: the order and its status history (orders), every event about it
in the outboxes of orders and inventory (written, published) and the inboxes
of the services that handled it (processed_events), the reservation
(inventory) and the notifications. When trace files exist (``LOG_DIR``,
default var/log) each entrypoint call with the same correlation id is added
with its duration. Each hop (an event from its writer to a handler) is timed
from the moment its outbox row was written: until the publish was recorded,
until the handler started (from the traces) and until its effect was
committed (the handler's inbox row). The outbox records ``published_at``
after the broker's confirm and its own database write, so a fast consumer
may start before that record: ``delivery_ms`` (publish recorded to handled)
can then be negative, while the times from the row being written are exact.
"""
import argparse
import glob
import json
import os
import sys
from datetime import datetime

from sqlalchemy import Text, cast, or_, select
from sqlalchemy.orm import Session

from services.common.db.database import make_engine
from services.common.messaging.events import as_utc
from services.common.observability.masking import mask, mask_text
from services.common.settings import load_config



def _utc(value):
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return as_utc(value)


class Step:
    def __init__(self, at, service, what, duration_ms=None, source="db"):
        self.at = _utc(at)
        self.service = service
        self.what = what
        self.duration_ms = duration_ms
        self.source = source

    def to_dict(self):
        return {"at": self.at.isoformat(), "service": self.service, "what": self.what,
                "duration_ms": self.duration_ms, "source": self.source}


def _session(config, service, base):
    return Session(make_engine(config["DB_URIS"]["{}:{}".format(service, base)], max_workers=1))


def _warn(message):
    print("warning: " + message, file=sys.stderr)


def find_orders(config, key):
    from services.orders.models import Order

    with _session(config, "orders", "OrdersBase") as session:
        orders = session.scalars(select(Order).where(
            or_(Order.id == key, Order.correlation_id == key)).order_by(Order.created_at)).all()
        return [{"id": order.id, "status": order.status, "total": order.total,
                 "customer_email": order.customer_email, "correlation_id": order.correlation_id,
                 "created_at": _utc(order.created_at), "reasons": order.reasons,
                 "history": [(_utc(change.at), change.from_status, change.to_status, change.reason)
                             for change in order.history]}
                for order in orders]


def outbox_rows(config, service, base, model, order_id):
    """Events about ``order_id`` a service wrote: the id appears in the body."""
    with _session(config, service, base) as session:
        rows = session.scalars(select(model).where(
            cast(model.body, Text).like("%{}%".format(order_id))).order_by(model.id)).all()
        return [{"service": service, "event_id": row.event_id, "type": row.event_type,
                 "correlation_id": row.correlation_id, "created_at": _utc(row.created_at),
                 "published_at": _utc(row.published_at)} for row in rows]


def handled(config, service, base, model, event_ids):
    if not event_ids:
        return []
    with _session(config, service, base) as session:
        rows = session.scalars(select(model).where(model.event_id.in_(event_ids))).all()
        return [{"service": service, "event_id": row.event_id, "consumer": row.consumer,
                 "at": _utc(row.processed_at)} for row in rows]


def collect(config, order, log_dir):
    from services.inventory.models import OutboxMessage as InventoryOutbox
    from services.inventory.models import ProcessedEvent as InventoryInbox
    from services.inventory.models import Reservation
    from services.notifications.models import DeliveryAttempt, Notification
    from services.notifications.models import ProcessedEvent as NotificationsInbox
    from services.orders.models import OutboxMessage as OrdersOutbox
    from services.orders.models import ProcessedEvent as OrdersInbox

    steps, hops = [], []
    for at, before, after, reason in order["history"]:
        what = "order placed ({})".format(after) if before is None else \
            "order {} -> {} ({})".format(before, after, reason)
        steps.append(Step(at, "orders", what))

    events = []
    for service, base, model in (("orders", "OrdersBase", OrdersOutbox),
                                 ("inventory", "InventoryBase", InventoryOutbox)):
        try:
            events += outbox_rows(config, service, base, model, order["id"])
        except Exception as exc:
            _warn("{} outbox not readable: {}".format(service, exc))
    event_ids = [event["event_id"] for event in events]
    deliveries = []
    for service, base, model in (("orders", "OrdersBase", OrdersInbox),
                                 ("inventory", "InventoryBase", InventoryInbox),
                                 ("notifications", "NotificationsBase", NotificationsInbox)):
        try:
            deliveries += handled(config, service, base, model, event_ids)
        except Exception as exc:
            _warn("{} inbox not readable: {}".format(service, exc))

    correlation_ids = {order["correlation_id"]} | {event["correlation_id"] for event in events}
    lines = trace_lines(log_dir, correlation_ids - {None})
    handler_calls = {}  # event id -> the traced handler call that succeeded
    for line in lines:
        event_id = (line.get("call") or {}).get("event_id")
        if event_id and line.get("outcome") == "success":
            handler_calls[event_id, line.get("service")] = line

    for event in events:
        steps.append(Step(event["created_at"], event["service"],
                          "event {} written to the outbox".format(event["type"])))
        if event["published_at"]:
            steps.append(Step(event["published_at"], event["service"],
                              "event {} published".format(event["type"])))
        for delivery in deliveries:
            if delivery["event_id"] != event["event_id"]:
                continue
            steps.append(Step(delivery["at"], delivery["service"], "event {} handled by {}".format(
                event["type"], delivery["consumer"])))
            hops.append({
                "event": event["type"], "from": event["service"],
                "to": "{}.{}".format(delivery["service"], delivery["consumer"]),
                "outbox_wait_ms": _ms(event["created_at"], event["published_at"]),
                "delivery_ms": _ms(event["published_at"], delivery["at"]),
                "total_ms": _ms(event["created_at"], delivery["at"]),
            })
            call = handler_calls.get((event["event_id"], delivery["service"]))
            if call is not None:
                hops[-1]["handler_started_ms"] = _ms(event["created_at"], _utc(call.get("started_at")))
                hops[-1]["handler_ms"] = call.get("duration_ms")

    try:
        with _session(config, "inventory", "InventoryBase") as session:
            reservation = session.get(Reservation, order["id"])
            if reservation is not None:
                if reservation.status == Reservation.RELEASED:  # reserved first, released later
                    steps.append(Step(reservation.created_at, "inventory", "stock reserved"))
                    steps.append(Step(reservation.updated_at, "inventory", "stock released"))
                else:
                    steps.append(Step(reservation.created_at, "inventory",
                                      "reservation decision: {}".format(reservation.status)))
    except Exception as exc:
        _warn("inventory database not readable: {}".format(exc))

    try:
        with _session(config, "notifications", "NotificationsBase") as session:
            for note in session.scalars(select(Notification).where(
                    Notification.order_id == order["id"]).order_by(Notification.id)):
                name = "notification {} via {} to {}".format(
                    note.event_type, note.channel, mask_text(note.address or note.recipient))
                steps.append(Step(note.created_at, "notifications", name + ": recorded"))
                for attempt in session.scalars(select(DeliveryAttempt).where(
                        DeliveryAttempt.notification_id == note.id).order_by(DeliveryAttempt.number)):
                    steps.append(Step(attempt.at, "notifications", "{}: attempt {} {}{}".format(
                        name, attempt.number, attempt.outcome,
                        " ({})".format(mask_text(attempt.error)) if attempt.error else ""),
                        attempt.duration_ms))
                if note.sent_at is not None:
                    steps.append(Step(note.sent_at, "notifications", name + ": sent"))
                elif note.status not in ("queued", "sending"):
                    steps.append(Step(note.updated_at, "notifications",
                                      "{}: {}".format(name, note.status)))
    except Exception as exc:
        _warn("notifications database not readable: {}".format(exc))

    steps += trace_steps(lines)
    steps.sort(key=lambda step: step.at)
    return steps, hops


def trace_lines(log_dir, correlation_ids):
    """The trace lines (dicts) of the files in ``log_dir`` that carry one of the ids."""
    found = []
    for path in sorted(glob.glob(os.path.join(log_dir, "*.trace.log"))):
        with open(path, errors="replace") as stream:
            for raw in stream:
                if not any(cid in raw for cid in correlation_ids):
                    continue
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if line.get("correlation_id") in correlation_ids:
                    found.append(line)
    return found


def trace_steps(lines):
    """A step per traced entrypoint call, placed at its start, with its duration."""
    steps = []
    for line in lines:
        kind = {"event": "event handler"}.get(line.get("kind"), line.get("kind"))
        what = "{} {}: {}".format(kind, line.get("entrypoint"), line.get("outcome"))
        request = (line.get("call") or {}).get("request")
        if request:
            what = "HTTP {} {} -> {}".format(request.get("method"), request.get("path"),
                                             line.get("http_status"))
        if line.get("exception_type"):
            what += " ({})".format(line["exception_type"])
        steps.append(Step(line.get("started_at") or line["timestamp"], line.get("service"),
                          what, line.get("duration_ms"), source="trace"))
    return steps


def _ms(start, end):
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 1)


def render(order, steps, hops, out):
    print("order {id}  {status}  total {total}  customer {email}  request id {cid}".format(
        email=mask_text(order["customer_email"]), cid=order["correlation_id"], **order), file=out)
    if order["reasons"]:
        print("  reasons: {}".format(json.dumps(order["reasons"])), file=out)
    start = steps[0].at if steps else None
    print("", file=out)
    print("  {:>10}  {:<15}  {:<13}  {}".format("since", "time (UTC)", "service", "step"), file=out)
    for step in steps:
        took = "  [{:.1f} ms]".format(step.duration_ms) if step.duration_ms is not None else ""
        mark = "  (trace)" if step.source == "trace" else ""
        print("  {:>10}  {:<15}  {:<13}  {}{}{}".format(
            "+{:.1f} ms".format(_ms(start, step.at)), step.at.strftime("%H:%M:%S.%f")[:-3],
            step.service, step.what, took, mark), file=out)
    if hops:
        print("\n  hops, timed from the event's outbox row being written:", file=out)
        for hop in hops:
            details = ["publish recorded +{}".format(_fmt(hop["outbox_wait_ms"]))]
            if "handler_started_ms" in hop:
                details.append("handler started +{}, ran {}".format(
                    _fmt(hop["handler_started_ms"]), _fmt(hop["handler_ms"])))
            print("    {event:<16} {frm:<10} -> {to:<30} handled +{total:>9}  ({details})".format(
                event=hop["event"], frm=hop["from"], to=hop["to"], total=_fmt(hop["total_ms"]),
                details="; ".join(details)), file=out)
    if len(steps) > 1:
        print("\n  first to last step: {} ms".format(_ms(steps[0].at, steps[-1].at)), file=out)


def _fmt(ms):
    return "?" if ms is None else "{:.1f} ms".format(ms)


def main(argv=None, out=sys.stdout):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("key", help="an order id or the request id (X-Request-ID) that placed it")
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--log-dir", default=os.environ.get("LOG_DIR") or "var/log",
                        help="where the *.trace.log files are (default: $LOG_DIR or var/log)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    config = load_config(args.config)

    orders = find_orders(config, args.key)
    if not orders:
        steps = sorted(trace_steps(trace_lines(args.log_dir, {args.key})), key=lambda step: step.at)
        if not steps:
            print("no order and no trace with id {}".format(args.key), file=sys.stderr)
            return 1
        if args.json:
            json.dump({"order": None, "steps": [step.to_dict() for step in steps]}, out, indent=2)
        else:
            print("no order for {}; its traced calls:".format(args.key), file=out)
            for step in steps:
                print("  {}  {:<13} {}  [{} ms]".format(step.at.strftime("%H:%M:%S.%f")[:-3],
                                                     step.service, step.what, step.duration_ms), file=out)
        return 0
    documents = []
    for order in orders:
        steps, hops = collect(config, order, args.log_dir)
        if args.json:
            summary = {key: order[key] for key in ("id", "status", "total", "correlation_id", "reasons")}
            summary["customer_email"] = mask_text(order["customer_email"])
            documents.append({"order": summary, "steps": [step.to_dict() for step in steps],
                              "hops": hops})
        else:
            render(order, steps, hops, out)
            print("", file=out)
    if args.json:
        json.dump(mask(documents if len(documents) > 1 else documents[0]), out, indent=2, default=str)
        print("", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

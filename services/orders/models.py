from sqlalchemy import JSON, Boolean, Column, DateTime, ForeignKey, Integer, String, Index
from sqlalchemy.orm import declarative_base, relationship

from services.common.messaging.consumers import ProcessedEventMixin
from services.common.messaging.events import utcnow
from services.common.messaging.outbox import OutboxMixin

OrdersBase = declarative_base(name="OrdersBase")


class Order(OrdersBase):
    __tablename__ = "orders"
    __table_args__ = (Index("ix_orders_created", "created_at", "id"),)

    id = Column(String(36), primary_key=True)
    customer_email = Column(String(254), nullable=False, index=True)
    status = Column(String(20), nullable=False, index=True)
    total = Column(Integer, nullable=False)  # integer cents
    reasons = Column(JSON, nullable=True)  # why it was rejected
    correlation_id = Column(String(64), nullable=True, index=True)
    created_at = Column(DateTime(timezone=True), nullable=False, default=utcnow)
    updated_at = Column(DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow)

    lines = relationship("OrderLine", order_by="OrderLine.position", lazy="selectin",
                         cascade="all, delete-orphan")
    history = relationship("StatusChange", order_by="StatusChange.id", lazy="selectin",
                           cascade="all, delete-orphan")


class OrderLine(OrdersBase):
    __tablename__ = "order_lines"

    order_id = Column(String(36), ForeignKey("orders.id"), primary_key=True)
    position = Column(Integer, primary_key=True)
    sku = Column(String(64), nullable=False)
    name = Column(String(200), nullable=False)
    quantity = Column(Integer, nullable=False)
    unit_price = Column(Integer, nullable=False)  # price at placement, cents


class StatusChange(OrdersBase):
    __tablename__ = "order_status_changes"

    id = Column(Integer, primary_key=True, autoincrement=True)
    order_id = Column(String(36), ForeignKey("orders.id"), nullable=False, index=True)
    from_status = Column(String(20), nullable=True)
    to_status = Column(String(20), nullable=False)
    reason = Column(String(200), nullable=True)
    at = Column(DateTime(timezone=True), nullable=False, default=utcnow)


class CatalogueItem(OrdersBase):
    """Orders' own copy of what it needs from inventory's catalogue."""

    __tablename__ = "catalogue"

    sku = Column(String(64), primary_key=True)
    name = Column(String(200), nullable=False)
    price = Column(Integer, nullable=False)
    active = Column(Boolean, nullable=False, default=True)
    version = Column(Integer, nullable=False)


class OutboxMessage(OutboxMixin, OrdersBase):
    pass


class ProcessedEvent(ProcessedEventMixin, OrdersBase):
    pass


class IdempotencyKey(OrdersBase):
    """A client's ``Idempotency-Key`` and the answer its first request got.

    (customer, key) is the primary key, so two racing requests with one key cannot
    both insert it: the loser's transaction (and with it its order and its
    ``order_created`` event) is rolled back, and it answers with the winner's
    stored response instead.
    """

    __tablename__ = "customer_idempotency_keys"

    # the customer's normalised email and the client's key: a key names
    # nothing outside its customer's own requests
    customer = Column(String(254), primary_key=True)
    key = Column(String(255), primary_key=True)
    request_hash = Column(String(64), nullable=False)
    order_id = Column(String(36), ForeignKey("orders.id"), nullable=False)
    status_code = Column(Integer, nullable=False)
    response = Column(JSON, nullable=False)
    created_at = Column(DateTime(timezone=True), nullable=False, default=utcnow, index=True)


class RateLimitCounter(OrdersBase):
    """A fixed-window request counter shared by every orders process (``ratelimit.py``).

    One row per (bucket, window start); incremented by an atomic upsert, so
    two processes counting the same caller at the same moment both count.
    """

    __tablename__ = "rate_limit_counters"

    bucket = Column(String(300), primary_key=True)
    window_start = Column(Integer, primary_key=True, autoincrement=False)  # unix seconds
    count = Column(Integer, nullable=False)

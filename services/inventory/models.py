from sqlalchemy import JSON, CheckConstraint, Column, DateTime, Integer, String, Boolean
from sqlalchemy.orm import declarative_base

from services.common.messaging.consumers import ProcessedEventMixin
from services.common.messaging.events import utcnow
from services.common.messaging.outbox import OutboxMixin

from . import domain

InventoryBase = declarative_base(name="InventoryBase")


class Product(InventoryBase):
    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint("price >= 0", name="price_not_negative"),
        CheckConstraint("reserved >= 0", name="reserved_not_negative"),
        CheckConstraint("reserved <= on_hand", name="reserved_within_on_hand"),
    )

    sku = Column(String(64), primary_key=True)
    name = Column(String(200), nullable=False)
    price = Column(Integer, nullable=False)  # integer cents
    on_hand = Column(Integer, nullable=False, default=0)
    reserved = Column(Integer, nullable=False, default=0)
    active = Column(Boolean, nullable=False, default=True)
    version = Column(Integer, nullable=False, default=1)
    created_at = Column(DateTime(timezone=True), nullable=False, default=utcnow)
    updated_at = Column(DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow)

    @property
    def available(self):
        return self.on_hand - self.reserved


class Reservation(InventoryBase):
    """One per order: what was reserved for it, or why it was not."""

    __tablename__ = "reservations"

    # the statuses are the domain's
    RESERVED = domain.RESERVED
    REJECTED = domain.REJECTED
    RELEASED = domain.RELEASED
    CANCELLED_BEFORE_RESERVATION = domain.CANCELLED_BEFORE_RESERVATION

    order_id = Column(String(36), primary_key=True)
    status = Column(String(20), nullable=False)
    lines = Column(JSON, nullable=False)  # {sku: quantity}
    reasons = Column(JSON, nullable=True)
    created_at = Column(DateTime(timezone=True), nullable=False, default=utcnow)
    updated_at = Column(DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow)


class OutboxMessage(OutboxMixin, InventoryBase):
    pass


class ProcessedEvent(ProcessedEventMixin, InventoryBase):
    pass

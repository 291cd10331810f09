from sqlalchemy import (
    JSON, Column, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint,
)
from sqlalchemy.orm import declarative_base, relationship

from services.common.messaging.consumers import ProcessedEventMixin
from services.common.messaging.events import utcnow

NotificationsBase = declarative_base(name="NotificationsBase")


class Notification(NotificationsBase):
    """One message to one customer through one channel, about one event.

    ``recipient`` is the customer (their email, whatever the channel);
    ``address`` is where this channel delivers (email, phone, device token).
    The content is rendered when the event arrives, so the sender needs
    nothing but this row.
    """

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("event_id", "channel", name="one_per_event_and_channel"),
        Index("ix_notifications_due", "status", "next_attempt_at"),
    )

    id = Column(Integer, primary_key=True, autoincrement=True)
    event_id = Column(String(36), nullable=False)
    event_type = Column(String(50), nullable=False)
    order_id = Column(String(36), nullable=False, index=True)
    recipient = Column(String(254), nullable=False, index=True)
    channel = Column(String(20), nullable=False)
    address = Column(String(512), nullable=True)
    subject = Column(String(200), nullable=False)
    body = Column(Text, nullable=False)
    html_body = Column(Text, nullable=True)
    status = Column(String(20), nullable=False, index=True)
    # attempts ever made, and those since it was last queued (the retry budget)
    attempt_count = Column(Integer, nullable=False, default=0)
    round_attempts = Column(Integer, nullable=False, default=0)
    # when a queued row is due; for a row being sent, when its claim lapses
    next_attempt_at = Column(DateTime(timezone=True), nullable=True)
    last_error = Column(Text, nullable=True)
    correlation_id = Column(String(64), nullable=True, index=True)
    created_at = Column(DateTime(timezone=True), nullable=False, default=utcnow)
    updated_at = Column(DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow)
    sent_at = Column(DateTime(timezone=True), nullable=True)

    attempts = relationship("DeliveryAttempt", order_by="DeliveryAttempt.id", cascade="all, delete-orphan")


class DeliveryAttempt(NotificationsBase):
    __tablename__ = "notification_attempts"

    id = Column(Integer, primary_key=True, autoincrement=True)
    notification_id = Column(Integer, ForeignKey("notifications.id"), nullable=False, index=True)
    number = Column(Integer, nullable=False)
    at = Column(DateTime(timezone=True), nullable=False, default=utcnow)
    outcome = Column(String(20), nullable=False)
    error = Column(Text, nullable=True)
    duration_ms = Column(Float, nullable=True)


class Preference(NotificationsBase):
    """How a customer wants to hear from us; no row means email only."""

    __tablename__ = "notification_preferences"

    customer_email = Column(String(254), primary_key=True)
    channels = Column(JSON, nullable=False)
    phone = Column(String(20), nullable=True)
    device_token = Column(String(512), nullable=True)
    updated_at = Column(DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow)


class ProcessedEvent(ProcessedEventMixin, NotificationsBase):
    pass

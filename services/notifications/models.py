from sqlalchemy import Column, DateTime, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import declarative_base

from services.common.consumers import ProcessedEventMixin
from services.common.events import utcnow

NotificationsBase = declarative_base(name="NotificationsBase")


class Notification(NotificationsBase):
    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("event_id", "channel", name="one_per_event_and_channel"),)

    id = Column(Integer, primary_key=True, autoincrement=True)
    event_id = Column(String(36), nullable=False)
    event_type = Column(String(50), nullable=False)
    order_id = Column(String(36), nullable=False, index=True)
    recipient = Column(String(254), nullable=False, index=True)
    channel = Column(String(20), nullable=False)
    subject = Column(String(200), nullable=False)
    body = Column(Text, nullable=False)
    status = Column(String(20), nullable=False, index=True)
    correlation_id = Column(String(64), nullable=True, index=True)
    created_at = Column(DateTime(timezone=True), nullable=False, default=utcnow)
    updated_at = Column(DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow)
    sent_at = Column(DateTime(timezone=True), nullable=True)


class ProcessedEvent(ProcessedEventMixin, NotificationsBase):
    pass

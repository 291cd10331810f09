"""The statuses an order can have: names only, so the schemas can validate
against them without importing the domain (which imports the events, whose
schemas import these)."""
PENDING = "pending"
CONFIRMED = "confirmed"
REJECTED = "rejected"
CANCELLED = "cancelled"

STATUSES = (PENDING, CONFIRMED, REJECTED, CANCELLED)

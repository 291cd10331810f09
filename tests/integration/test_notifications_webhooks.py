"""SMS and push through provider webhooks (a real HTTP server on loopback),
preferences over RPC, and the RPC contract's errors."""
import pytest
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ClusterRpcProxy

from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.messaging.events import new_event
from services.notifications.service import NotificationsService
from tests.support import eventually
from tests.support.notifications_fakes import FAST_DELIVERY, order_data

AUTH = "Authorization: Bearer test-token"


@pytest.fixture
def backend():
    return "sqlite"



@pytest.fixture
def config(service_config, provider):
    service_config.update(FAST_DELIVERY)
    service_config.update(SMS_WEBHOOK_URL=provider.url("/sms"), PUSH_WEBHOOK_URL=provider.url("/push"),
                          WEBHOOK_AUTH_HEADER=AUTH)
    return service_config


@pytest.fixture
def start(container_factory, config):
    def start_service(**overrides):
        container = container_factory(NotificationsService, dict(config, **overrides))
        container.start()
        return container
    return start_service


@pytest.fixture
def notifications(config):
    with ClusterRpcProxy(config, timeout=5) as proxy:
        yield proxy.notifications


def publish(config, event_type, data):
    event_dispatcher(config)("orders", event_type, new_event("orders", event_type, data))


def by_channel(notifications, order_id, wanted):
    notes = {note["channel"]: note for note in notifications.list_notifications(order_id=order_id)}
    done = all(notes.get(channel, {}).get("status") == status for channel, status in wanted.items())
    return notes if done else None


def test_sms_and_push_providers_receive_the_expected_json(config, provider, start, notifications):
    start()
    notifications.set_preferences("Eve@Example.com", ["email", "sms", "push"], phone="+447700900123",
                                  device_token="device-abc")
    order = order_data("eve@example.com")
    publish(config, "order_confirmed", order)

    everything_sent = {"log": "sent", "sms": "sent", "push": "sent"}
    notes = eventually(lambda: by_channel(notifications, order["id"], everything_sent),
                       message="all three channels sent")
    [sms] = provider.posts("/sms")
    assert sms["json"] == {
        "to": "+447700900123",
        "text": "Order {} confirmed: 3 items, total 27.50. Thank you!".format(order["id"][:8]),
        "notification_id": notes["sms"]["id"], "event_type": "order_confirmed", "order_id": order["id"]}
    [push] = provider.posts("/push")
    assert push["json"] == {
        "device_token": "device-abc", "title": "Order confirmed",
        "body": "Your order {} (3 items, 27.50) is confirmed.".format(order["id"][:8]),
        "data": {"order_id": order["id"], "event_type": "order_confirmed"},
        "notification_id": notes["push"]["id"], "event_type": "order_confirmed", "order_id": order["id"]}
    for request in (sms, push):
        assert request["headers"]["Authorization"] == "Bearer test-token"
        assert request["headers"]["Content-Type"] == "application/json"
    assert sms["headers"]["Idempotency-Key"] != push["headers"]["Idempotency-Key"]
    assert notes["sms"]["address"] == "+447700900123" and notes["push"]["address"] == "device-abc"


def test_provider_5xx_is_retried_and_4xx_fails_at_once(config, provider, start, notifications):
    start()
    notifications.set_preferences("fay@example.com", ["sms", "push"], phone="+447700900124", device_token="dev")
    provider.statuses = [503, 400]  # first call (either channel) 503, second 400, then 200
    order = order_data("fay@example.com", status="cancelled")
    publish(config, "order_cancelled", order)

    def one_sent_one_failed():
        notes = by_channel(notifications, order["id"], {})
        return notes if {note["status"] for note in notes.values()} == {"sent", "failed"} else None

    notes = eventually(one_sent_one_failed, message="one sent after a retry, one failed")
    [failed] = [note for note in notes.values() if note["status"] == "failed"]
    [sent] = [note for note in notes.values() if note["status"] == "sent"]
    assert [a["outcome"] for a in failed["attempts"]] == ["permanent_error"]
    assert failed["last_error"].startswith("HTTP 400")
    assert [a["outcome"] for a in sent["attempts"]] == ["transient_error", "sent"]
    assert sent["attempts"][0]["error"].startswith("HTTP 503")
    retried = [request for request in provider.requests if request["path"] == "/" + sent["channel"]]
    assert len(retried) == 2
    assert retried[0]["headers"]["Idempotency-Key"] == retried[1]["headers"]["Idempotency-Key"]


def test_a_provider_that_does_not_answer_in_time_is_a_transient_failure(config, provider, start, notifications):
    start(WEBHOOK_TIMEOUT=0.3, NOTIFY_MAX_ATTEMPTS=2)
    provider.delay = 1
    notifications.set_preferences("gil@example.com", ["push"], device_token="dev")
    order = order_data("gil@example.com")
    publish(config, "order_confirmed", order)
    notes = eventually(lambda: by_channel(notifications, order["id"], {"push": "failed"}), message="push failed")
    assert [a["outcome"] for a in notes["push"]["attempts"]] == ["transient_error"] * 2
    assert "did not answer within 0.3s" in notes["push"]["last_error"]


def test_a_channel_that_is_not_configured_is_skipped_with_the_reason(config, provider, start, notifications):
    start(SMS_WEBHOOK_URL="")
    notifications.set_preferences("hal@example.com", ["email", "sms"], phone="+447700900125")
    order = order_data("hal@example.com")
    publish(config, "order_confirmed", order)
    notes = eventually(lambda: by_channel(notifications, order["id"], {"log": "sent", "sms": "skipped"}),
                       message="email logged, sms skipped")
    assert notes["sms"]["last_error"] == "sms is not configured (SMS_WEBHOOK_URL is not set)"
    assert notes["sms"]["attempts"] == []
    assert provider.requests == []
    with pytest.raises(Conflict):
        notifications.retry_notification(notes["sms"]["id"])


def test_preferences_default_to_email_and_round_trip(start, notifications):
    start()
    assert notifications.get_preferences("new@example.com") == {
        "customer_email": "new@example.com", "channels": ["email"], "phone": None, "device_token": None,
        "updated_at": None}
    stored = notifications.set_preferences("New@Example.com", ["sms"], phone="+15550100999")
    assert stored["channels"] == ["sms"] and stored["phone"] == "+15550100999" and stored["updated_at"]
    assert notifications.get_preferences("new@example.com") == stored
    notifications.set_preferences("new@example.com", [])
    assert notifications.get_preferences("new@example.com")["channels"] == []


@pytest.mark.parametrize("arguments, field", [
    (("not-an-email", ["email"]), "customer_email"),
    (("a@example.com", ["fax"]), "channels"),
    (("a@example.com", ["email", "email"]), "channels"),
    (("a@example.com", "email"), "channels"),
    (("a@example.com", ["sms"]), "phone"),
    (("a@example.com", ["sms"], "0123"), "phone"),
    (("a@example.com", ["push"]), "device_token"),
])
def test_bad_preferences_are_refused_naming_the_field(start, notifications, arguments, field):
    start()
    with pytest.raises(InvalidInput) as refused:
        notifications.set_preferences(*arguments)
    assert field in refused.value.details, refused.value.details


def test_rpc_errors_name_the_problem(start, notifications):
    start()
    with pytest.raises(InvalidInput) as refused:
        notifications.list_notifications(status="lost")
    assert "status" in refused.value.details
    with pytest.raises(InvalidInput) as refused:
        notifications.retry_notification("seven")
    assert "notification_id" in refused.value.details
    with pytest.raises(NotFound):
        notifications.retry_notification(987654)
    with pytest.raises(NotFound):
        notifications.get_notification(987654)

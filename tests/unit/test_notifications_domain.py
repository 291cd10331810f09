"""Notification rules: who is told through what, and what a failure leads to."""
import random

import pytest

from services.notifications import domain
from services.notifications.channels import ConfigurationError, build_channels, parse_auth_header

EMAIL = "ann@example.com"


def test_without_preferences_email_only_and_log_stands_in_without_smtp():
    [planned] = domain.plan_deliveries(None, EMAIL, configured=set())
    assert planned == domain.Delivery("log", "email", EMAIL, "queued", None)
    [planned] = domain.plan_deliveries(None, EMAIL, configured={"email"})
    assert planned.channel == "email" and planned.status == "queued"


def test_each_chosen_channel_is_planned_with_its_address():
    preferences = {"channels": ["email", "sms", "push"], "phone": "+4412345678", "device_token": "tok"}
    planned = domain.plan_deliveries(preferences, EMAIL, {"email", "sms", "push"})
    assert [(d.channel, d.address, d.status) for d in planned] == [
        ("email", EMAIL, "queued"), ("sms", "+4412345678", "queued"), ("push", "tok", "queued")]


def test_a_channel_not_configured_is_skipped_with_the_setting_named():
    preferences = {"channels": ["sms", "push"], "phone": "+4412345678", "device_token": "tok"}
    planned = domain.plan_deliveries(preferences, EMAIL, {"push"})
    assert planned[0].status == "skipped"
    assert "SMS_WEBHOOK_URL" in planned[0].reason
    assert planned[1].status == "queued"


def test_a_channel_without_address_is_skipped():
    [planned] = domain.plan_deliveries({"channels": ["sms"], "phone": None}, EMAIL, {"sms"})
    assert planned.status == "skipped" and "phone" in planned.reason


def test_an_empty_channel_list_means_no_notification():
    assert domain.plan_deliveries({"channels": []}, EMAIL, {"email"}) == []


@pytest.mark.parametrize("attempt, low, high", [(1, 0.5, 1), (2, 1, 2), (3, 2, 4), (10, 5, 10)])
def test_backoff_grows_exponentially_with_jitter_up_to_the_cap(attempt, low, high):
    rng = random.Random(7)
    delays = [domain.backoff_delay(attempt, base=1, cap=10, rng=rng) for _ in range(200)]
    assert all(low <= delay <= high for delay in delays)
    assert len({round(delay, 6) for delay in delays}) > 100  # jittered, not fixed


def test_success_is_sent():
    assert domain.after_attempt(None, 1, 3, 1, 10) == domain.Decision("sent", None, None)


def test_transient_failure_is_retried_until_the_budget_is_spent():
    error = domain.TransientFailure("SMTP down")
    first = domain.after_attempt(error, 1, 3, 1, 10, rng=random.Random(1))
    assert first.status == "queued" and 0.5 <= first.delay <= 1 and first.error == "SMTP down"
    second = domain.after_attempt(error, 2, 3, 1, 10, rng=random.Random(1))
    assert second.status == "queued" and 1 <= second.delay <= 2
    assert domain.after_attempt(error, 3, 3, 1, 10) == domain.Decision("failed", None, "SMTP down")


def test_permanent_failure_fails_at_once():
    decision = domain.after_attempt(domain.PermanentFailure("550 no such user"), 1, 5, 1, 10)
    assert decision == domain.Decision("failed", None, "550 no such user")


@pytest.mark.parametrize("code, permanent", [(550, True), (553, True), (535, True), (421, False),
                                             (451, False), (-1, False)])
def test_smtp_reply_codes(code, permanent):
    assert domain.smtp_failure(code, "x").permanent is permanent


@pytest.mark.parametrize("status, permanent", [(400, True), (401, True), (404, True), (422, True),
                                               (301, True), (408, False), (429, False), (500, False),
                                               (503, False)])
def test_http_statuses(status, permanent):
    assert domain.http_failure(status, "x").permanent is permanent


def test_only_failed_notifications_can_be_retried():
    domain.check_retryable("failed")
    for status in ("queued", "sending", "sent", "skipped"):
        with pytest.raises(domain.NotRetryable):
            domain.check_retryable(status)


def test_outcomes_and_masking():
    assert domain.outcome_of(None) == "sent"
    assert domain.outcome_of(domain.TransientFailure("x")) == "transient_error"
    assert domain.outcome_of(domain.PermanentFailure("x")) == "permanent_error"
    assert domain.mask("ann@example.com") == "a***@example.com"
    assert domain.mask("+441234567890") == "***7890"
    assert domain.money(2550) == "25.50" and domain.money(5) == "0.05" and domain.money(-150) == "-1.50"


def test_channels_from_config():
    assert set(build_channels({})) == {"log"}
    channels = build_channels({"SMTP_HOST": "mail.example.com", "SMTP_SECURITY": "tls", "SMTP_PORT": None,
                               "MAIL_FROM": "Shop <shop@example.com>", "SMS_WEBHOOK_URL": "http://sms/x",
                               "PUSH_WEBHOOK_URL": "", "WEBHOOK_AUTH_HEADER": "X-Api-Key: k"})
    assert set(channels) == {"log", "email", "sms"}
    assert channels["email"].port == 465 and channels["email"].envelope_from == "shop@example.com"
    assert channels["sms"].headers == {"X-Api-Key": "k"}


@pytest.mark.parametrize("config", [
    {"SMTP_HOST": "h", "SMTP_SECURITY": "ssl"},
    {"SMTP_HOST": "h", "SMTP_PORT": "twenty-five"},
    {"SMTP_HOST": "h", "MAIL_FROM": "nobody"},
    {"SMS_WEBHOOK_URL": "ftp://provider"},
])
def test_unusable_settings_stop_the_service_from_starting(config):
    with pytest.raises(ConfigurationError):
        build_channels(config)


def test_auth_header_forms():
    assert parse_auth_header("Authorization: Bearer abc") == {"Authorization": "Bearer abc"}
    assert parse_auth_header("Bearer abc") == {"Authorization": "Bearer abc"}
    assert parse_auth_header("") == {}


def test_config_yaml_names_every_setting_and_runs_on_the_log_channel_by_default(monkeypatch):
    import os

    from services.common.settings import load_config

    for name in ("SMTP_HOST", "SMS_WEBHOOK_URL", "PUSH_WEBHOOK_URL", "WEBHOOK_AUTH_HEADER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SMTP_PASSWORD", "p@ss: #word")
    config = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "config.yaml"))
    for name in ("SMTP_HOST", "SMTP_PORT", "SMTP_SECURITY", "SMTP_USERNAME", "SMTP_PASSWORD", "MAIL_FROM",
                 "SMS_WEBHOOK_URL", "PUSH_WEBHOOK_URL", "WEBHOOK_AUTH_HEADER", "NOTIFY_MAX_ATTEMPTS",
                 "NOTIFY_BACKOFF_BASE", "NOTIFY_BACKOFF_MAX"):
        assert name in config
    assert config["SMTP_PASSWORD"] == "p@ss: #word"  # taken verbatim, not parsed as YAML
    assert set(build_channels(config)) == {"log"}


def test_order_events_are_read_by_order_id_or_id():
    from services.notifications.schemas import OrderEventSchema

    event = {"status": "confirmed", "customer_email": "a@example.com", "total": 1, "lines": []}
    assert OrderEventSchema().load(dict(event, order_id="o-1"))["id"] == "o-1"
    assert OrderEventSchema().load(dict(event, id="o-2"))["id"] == "o-2"

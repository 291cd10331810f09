"""LOG_FORMAT: the services' log lines as config.yaml configures them."""
import json
import logging
import logging.config
import os

import pytest

from services.common.observability import correlation
from services.common.settings import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def configure_logging(monkeypatch):
    """Apply config.yaml's LOGGING with the given LOG_FORMAT; restore logging after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def configure(log_format):
        monkeypatch.setenv("LOG_FORMAT", log_format)
        monkeypatch.delenv("LOG_DIR", raising=False)
        logging.config.dictConfig(load_config(os.path.join(ROOT, "config.yaml"))["LOGGING"])

    yield configure
    root.handlers[:], root.level = saved
    correlation.set_current_correlation_id(None)


def test_json_lines_go_to_stdout_with_correlation_id_and_masked_emails(configure_logging, capsys):
    configure_logging("json")
    correlation.set_current_correlation_id("req-123")
    try:
        raise ValueError("bad address ann@example.com")
    except ValueError:
        logging.getLogger("services.orders.service").exception("could not place order for %s",
                                                                "ann@example.com")
    out, err = capsys.readouterr()
    assert err == ""
    [line] = [json.loads(text) for text in out.splitlines() if text.strip()]
    assert line["level"] == "ERROR"
    assert line["logger"] == "services.orders.service"
    assert line["message"] == "could not place order for a***@example.com"
    assert line["correlation_id"] == "req-123"
    assert line["trace_id"] is None and line["span_id"] is None  # no active span
    assert "ValueError" in line["exc_info"]
    assert "ann@example.com" not in out
    assert line["timestamp"].endswith("+00:00")


def test_text_is_the_default_and_also_goes_to_stdout(configure_logging, capsys):
    configure_logging("text")
    logging.getLogger("services.inventory.service").info("hello")
    out, err = capsys.readouterr()
    assert err == ""
    assert out.rstrip().endswith("INFO services.inventory.service [-] hello")


def test_an_unknown_log_format_is_refused_by_name(configure_logging):
    with pytest.raises(ValueError) as refused:
        configure_logging("xml")
    # logging.config wraps it; the cause (printed with the traceback) names the setting
    assert "LOG_FORMAT must be one of text, json, not 'xml'" in str(refused.value.__cause__)


def test_an_expected_error_is_one_info_line_without_its_traceback(configure_logging, capsys):
    configure_logging("text")
    containers = logging.getLogger("nameko.containers")
    try:
        raise LookupError("No order 123 for ann@example.com")
    except LookupError as exc:
        containers.warning("(expected) error handling worker %s: %s", "<worker>", exc, exc_info=True)
        containers.exception("error handling worker %s: %s", "<worker>", exc)
    out, _ = capsys.readouterr()
    expected, unexpected = out.split("\n", 1)
    assert " INFO nameko.containers " in expected and "(expected) error" in expected
    assert "Traceback" not in expected and "a***@example.com" in expected
    # an error nobody declared keeps its level and traceback
    assert " ERROR nameko.containers " in unexpected and "Traceback" in unexpected

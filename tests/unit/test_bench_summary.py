"""The benchmark's ratios: against the mean of the baselines measured before and after the system."""
from bench.run import summary, table


def level(name, mode, ok_per_s):
    return {"level": name, "mode": mode, "value": 32,
            "http": {"ok_per_s": ok_per_s, "error_count": 0, "latency_ms": {"p50": 1, "p95": 2, "p99": 3}}}


def system_level(name, completed_per_s):
    entry = level(name, "closed", completed_per_s * 1.2)
    entry["completion"] = {"completed_per_s": completed_per_s, "accepted_to_confirmed_ms": {"p50": 1, "p99": 2},
                           "accepted_to_notified_ms": {"p99": 3}}
    entry["processes"] = {}
    return entry


def test_ratios_are_against_the_mean_of_the_baselines_before_and_after():
    report = {"db": "postgresql",
              "baseline": [level("c32", "closed", 240.0), level("r100", "open", 100.0)],
              "baseline_after": [level("c32", "closed", 320.0), level("r100", "open", 98.0)],
              "system": [{"instances": 1, "levels": [system_level("c32", 98.0), system_level("r100", 90.0)],
                          "stock": {"on_hand": 10, "reserved": 2}, "orders_completed": 2}]}
    summary(report)
    assert report["baseline_best_before_after"] == [240.0, 320.0]
    assert report["baseline_best_req_per_s"] == 280.0
    (run,) = report["system"]
    assert run["best_completed_per_s"] == 98.0 and run["ratio_to_baseline"] == 0.35
    assert [e["ratio_to_baseline_same_level"] for e in run["levels"]] == [0.35, 0.909]
    assert "mean of 240 before and 320 after" in table(report)


def test_without_a_second_baseline_the_first_alone_counts():
    report = {"db": "sqlite", "baseline": [level("c32", "closed", 400.0)],
              "system": [{"instances": 1, "levels": [system_level("c32", 200.0)]}]}
    summary(report)
    assert report["baseline_best_req_per_s"] == 400.0 and report["system"][0]["ratio_to_baseline"] == 0.5

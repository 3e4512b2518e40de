"""app.budgets.WindowBudget with a clock the test moves (no sleeping out a window), and the settings' ranges."""

from app.budgets import WindowBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_visitor_spends_within_the_window_and_gets_it_back_after():
    clock = Clock()
    budget = WindowBudget(per_client=10, total=15, window=60, clock=clock)
    assert budget.exceeded("a", 6) is None
    budget.charge("a", 6)
    assert budget.exceeded("a", 5) == "client" and budget.exceeded("b", 5) is None
    budget.charge("b", 8)
    assert budget.exceeded("c", 2) == "total" and budget.used() == 14 and budget.used("a") == 6
    clock.now += 59.9
    assert budget.exceeded("a", 5) == "client"
    clock.now += 0.1  # the first charges leave the window
    assert budget.exceeded("a", 10) is None and budget.used() == 0


def test_checking_charges_nothing():
    budget = WindowBudget(per_client=1, total=1, window=60, clock=Clock())
    for _ in range(5):
        assert budget.exceeded("a", 1) is None
    assert budget.used("a") == 0


def test_a_setting_out_of_range_is_refused_with_its_name(monkeypatch):
    import pytest

    from app.settings import ServingSettings, SettingsError

    for name, value in [("DSNET_PER_CLIENT", "0"), ("DSNET_CONCURRENCY", "-1"), ("DSNET_BODY_TIMEOUT", "nan")]:
        monkeypatch.setenv(name, value)
        with pytest.raises(SettingsError, match=name):
            ServingSettings.from_env()
        monkeypatch.delenv(name)
    monkeypatch.setenv("DSNET_TRUSTED_PROXIES", "0")
    assert ServingSettings.from_env().trusted_proxies == 0

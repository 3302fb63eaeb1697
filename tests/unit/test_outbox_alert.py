"""The outbox-age alert: thresholds from [monitor], alarms sooner, cleared when drained."""

import pytest

from hub.config import MonitorSettings
from hub.monitor import outbox_alerts
from hub.store.repository import StatusReport

SETTINGS = MonitorSettings(outbox_age_alert_seconds=600, outbox_age_alarm_alert_seconds=60)


def report(oldest: dict[str, float], alarms: dict[str, float]) -> StatusReport:
    return StatusReport(oldest_pending_seconds=oldest, oldest_pending_alarm_seconds=alarms)


def test_alarm_deliveries_alert_sooner_than_others():
    alerts = outbox_alerts(report({"ehr": 61, "gp": 300, "old": 601}, {"ehr": 61}), SETTINGS)
    assert set(alerts) == {"ehr", "old"}
    assert alerts["ehr"].alarm
    assert alerts["ehr"].threshold_seconds == 60
    assert not alerts["old"].alarm
    assert alerts["old"].threshold_seconds == 600


def test_no_alert_below_thresholds_or_when_drained():
    assert outbox_alerts(report({"ehr": 59}, {"ehr": 59}), SETTINGS) == {}
    assert outbox_alerts(report({}, {}), SETTINGS) == {}


def test_alarm_threshold_may_not_exceed_the_ordinary_one():
    with pytest.raises(ValueError, match="outbox_age_alarm_alert_seconds"):
        MonitorSettings(outbox_age_alert_seconds=60, outbox_age_alarm_alert_seconds=120)

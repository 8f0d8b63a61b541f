"""``pytz.timezone``: the official ``infinity/utils`` only format log timestamps with it."""
import datetime


def timezone(name: str) -> datetime.tzinfo:
    return datetime.timezone(datetime.timedelta(hours=8), name) if name == "Asia/Shanghai" else datetime.timezone.utc

"""Date formats for English pages (the operators' admin): one unambiguous time with seconds and zone.

Django's own English default ("Dec. 1, 2026, 4:15 a.m.") drops the seconds and the zone; operators
compare times with logs and Shoptet's `eventCreated`, so every admin page shows
`2026-12-01 04:15:09 UTC` (the project's TIME_ZONE is UTC). `eshops.templatetags.console.utc` formats
with the same string.
"""

from __future__ import annotations

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = DATETIME_FORMAT
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = DATE_FORMAT
TIME_FORMAT = "H:i:s"

"""A deployment event's form: the dict ``Store.history`` lists (what ``transition_event``
builds) and the tags of the finished run the store keeps it as, in the deployments experiment
(``Store.append_event`` writes them, ``Store.history`` reads them back)."""

from __future__ import annotations

import datetime as _dt
import json

# A deployment event the inference process made by itself (a judged canary): its one-line reason
# and its evidence (JSON) on the event's run; MLflow keeps tag values up to 8,000 characters.
TAG_EVENT_REASON = "km.reason"
TAG_EVENT_EVIDENCE = "km.evidence"
EVENT_TAG_MAX = 8000


def transition_event(
    action: str,
    from_version: int | None,
    to_version: int | None,
    reason: str | None = None,
    evidence: dict | None = None,
) -> dict:
    """One deployment event as ``Store.history`` lists it, stamped now (UTC); ``reason`` and
    ``evidence`` only for a transition the inference process made by itself."""
    return {
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds"),
        "action": action,
        "from_version": from_version,
        "to_version": to_version,
        "reason": reason,
        "evidence": evidence,
    }


def event_run_name(name: str, event: dict) -> str:
    before, after = event["from_version"], event["to_version"]
    return f"{name}: {event['action']} v{before or '-'} → v{after or '-'}"


def event_tags(name: str, event: dict) -> dict[str, str]:
    """The tags of the run that keeps ``event`` of model ``name``."""
    before, after = event["from_version"], event["to_version"]
    tags = {
        "km.model": name,
        "km.action": event["action"],
        "km.from_version": str(before or ""),
        "km.to_version": str(after or ""),
        "km.time": event["time"],
    }
    if event.get("reason"):
        tags[TAG_EVENT_REASON] = str(event["reason"])[:EVENT_TAG_MAX]
    if event.get("evidence"):
        text = json.dumps(event["evidence"], allow_nan=False)
        if len(text) <= EVENT_TAG_MAX:  # figures too long for a tag stay in the log only
            tags[TAG_EVENT_EVIDENCE] = text
    return tags


def event_from_tags(tags: dict[str, str]) -> dict:
    """The event a run's tags keep (``event_tags`` read back)."""
    return {
        "time": tags.get("km.time", ""),
        "action": tags.get("km.action", ""),
        "from_version": _version(tags.get("km.from_version")),
        "to_version": _version(tags.get("km.to_version")),
        "reason": tags.get(TAG_EVENT_REASON),
        "evidence": _evidence(tags.get(TAG_EVENT_EVIDENCE)),
    }


def _version(text: str | None) -> int | None:
    return int(text) if text else None


def _evidence(text: str | None) -> dict | None:
    """A history event's evidence tag, read back (None when absent or not a JSON object)."""
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None

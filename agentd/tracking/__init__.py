"""Process tracking: which processes belong to which tool call, from the kernel.

See docs/tracking.md. Entry point: `Tracker.start()`.
"""

from agentd.tracking.events import Kind, LossReport, ProcEvent
from agentd.tracking.source import EventSource, SourceUnavailable, choose_source
from agentd.tracking.tracker import Subscription, Tracker
from agentd.tracking.tree import ProcessNode, ProcessTree

__all__ = [
    "EventSource",
    "Kind",
    "LossReport",
    "ProcEvent",
    "ProcessNode",
    "ProcessTree",
    "SourceUnavailable",
    "Subscription",
    "Tracker",
    "choose_source",
]

"""Delivery: from the spool to the destination's MX, from the message's source IP,
in stages (queue, egress, dispatcher, outcomes) that `engine.DeliveryEngine`
composes. See each module's docstring for the rules it owns."""

from .egress import SourceSelector
from .engine import DeliveryEngine
from .queue import next_attempt_at, retry_delay

__all__ = ["DeliveryEngine", "SourceSelector", "next_attempt_at", "retry_delay"]

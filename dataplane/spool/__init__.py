"""The durable spool (see `directory`); `dataplane.spool` is its one public name."""

from .directory import *  # noqa: F401,F403 - the rename's stand-in until the split that follows

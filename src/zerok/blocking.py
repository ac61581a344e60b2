"""``zerok.blocking.SyncClient``: the client API for code that is not async."""

from zerok.client.blocking import SyncClient

__all__ = ["SyncClient"]

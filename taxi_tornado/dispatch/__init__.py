"""Dispatch: who hears of a trip (docs/dispatch.md).

What a strategy plugin needs is exported here; the server's side is dispatch.service.
"""

from taxi_tornado.dispatch.broadcast import BroadcastStrategy
from taxi_tornado.dispatch.locations import LocationIndex, NearbyDriver
from taxi_tornado.dispatch.strategy import DispatchContext, DispatchStrategy, StrategyFactory

__all__ = ["BroadcastStrategy", "DispatchContext", "DispatchStrategy", "LocationIndex",
           "NearbyDriver", "StrategyFactory"]

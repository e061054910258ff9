"""The Python client of taxi_tornado (``pip install 'taxi-tornado[client]'``): asyncio, on
the websockets library. A session that survives lost links and expiring tokens:

    client = TaxiClient("wss://taxi.example.com/taxi/", get_token)
    client.on("trip.updated", lambda trip, frame: print(trip["status"]))
    await client.connect()
    trip = await client.request("trip.request", {"pick_up_address": "A",
                                                 "drop_off_address": "B"})
    await client.close()

docs/clients.md shows a rider's and a driver's flow and what the app still does itself.
"""

from taxi_tornado.client.backoff import backoff
from taxi_tornado.client.client import KEYED_TYPES, State, TaxiClient, TokenSource
from taxi_tornado.client.errors import TaxiError
from taxi_tornado.client.positions import Position
from taxi_tornado.client.token import token_expiry

__all__ = ["KEYED_TYPES", "Position", "State", "TaxiClient", "TaxiError", "TokenSource",
           "backoff", "token_expiry"]

"""`taxi-tornado simulate`: a city that runs by itself. Hundreds of synthetic phones
(drivers and riders, each a `taxi_tornado.client.TaxiClient` over a real socket) use a
server as people would, while every phone records what it sent and heard; after the
run a checker judges those histories and the server's store, and names each broken
invariant with an example (docs/simulate.md).

The modules, by job: `city` (geometry and movement), `clock` (simulated time),
`drivers` and `riders` (the people), `recorder` (what each phone saw), `accounts` and
`api` (sign-up and the HTTP API), `server` (the server a run starts for itself),
`checker` (the judgement and the report), `runner` (a run from start to report).
"""

from taxi_tornado.simulate.checker import History, check
from taxi_tornado.simulate.options import Behaviour, Options
from taxi_tornado.simulate.runner import simulate

__all__ = ["Behaviour", "History", "Options", "check", "simulate"]

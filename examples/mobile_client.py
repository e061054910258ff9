"""A rider on taxi_tornado's Python client (taxi_tornado.client; docs/clients.md): it
requests a trip and prints what happens to it, through lost links and token expiries.

    pip install 'taxi-tornado[client]'
    python examples/mobile_client.py ws://127.0.0.1:8000/taxi/ <access token>
"""

import asyncio
import sys

from taxi_tornado.client import TaxiClient


async def main(url: str, token: str) -> None:
    client = TaxiClient(url, lambda: token)  # a real app fetches a fresh token here
    client.on("state", lambda state: print("link:", state))
    client.on("trip.updated", lambda trip, _frame: print("trip:", trip["status"]))
    await client.connect()
    trip = await client.request("trip.request", {"pick_up_address": "Station",
                                                 "drop_off_address": "Airport"})
    print("requested", trip["id"])
    await asyncio.sleep(600)
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

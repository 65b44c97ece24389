"""The peer: what a user would write instead of kong-ship. A loop over the log that maps each Kong record to
a Segment `track()` call with Segment's official library (segment-analytics-python), then `flush()`.

Run as its own process (so it has the interpreter to itself, as kong-ship has):
    python bench/peer.py LOG SEGMENT_URL COUNT
with SEGMENT_WRITE_KEY in the environment. Prints one JSON object: how many records it tracked, how many the
library refused because its queue was full (dropped), and the seconds from the first record to the end of
flush().
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime

import jwt
import segment.analytics as analytics


def user_of(record: dict) -> tuple[str | None, str | None]:
    token = record.get("jwt")
    if token:
        claims = jwt.decode(token, options={"verify_signature": False})
        return claims.get("sub"), None
    consumer = record.get("consumer") or {}
    if consumer.get("custom_id") or consumer.get("username"):
        return consumer.get("custom_id") or consumer.get("username"), None
    return None, record.get("client_ip") or "anonymous"


def main() -> None:
    path, host, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    analytics.write_key = os.environ["SEGMENT_WRITE_KEY"]
    analytics.host = host
    errors: list[str] = []
    analytics.on_error = lambda exc, batch: errors.append(f"{exc} ({len(batch)} messages)")
    tracked = dropped = 0
    start = time.perf_counter()
    with open(path, encoding="utf-8") as log:
        for line in log:
            if tracked + dropped >= count:
                break
            record = json.loads(line)
            request, response = record["request"], record["response"]
            user_id, anonymous_id = user_of(record)
            latencies = record.get("latencies") or {}
            properties = {
                "method": request["method"],
                "url": request.get("url"),
                "path": request["uri"].split("?")[0],
                "queryObject": request.get("querystring") or {},
                "statusCode": response.get("status"),
                "timeOfRequest": latencies.get("request"),
                "timeOfKong": latencies.get("kong"),
                "timeOfProxy": latencies.get("proxy"),
                "service": (record.get("service") or {}).get("name"),
                "route": (record.get("route") or {}).get("name"),
            }
            queued, _ = analytics.track(
                user_id=user_id,
                anonymous_id=anonymous_id,
                event=f"API Request: {request['method']}",
                properties=properties,
                context={"ip": record.get("client_ip"), "userAgent": request["headers"].get("user-agent")},
                timestamp=datetime.fromtimestamp(record["started_at"] / 1000, UTC),
                message_id=request.get("id"),
            )
            if queued:
                tracked += 1
            else:
                dropped += 1
    analytics.flush()
    elapsed = time.perf_counter() - start
    analytics.shutdown()
    print(json.dumps({"tracked": tracked, "dropped": dropped, "elapsed": elapsed, "errors": errors[:5]}))


if __name__ == "__main__":
    main()

"""moto's server, with DynamoDB requests one at a time.

moto serves requests on threads and its DynamoDB models take no lock, so two conditional
writes to one item can both pass their condition (check, then write). DynamoDB itself applies
each item's conditional write atomically; serialising DynamoDB requests gives the tests that
guarantee (the lease race and fencing tests depend on it). Other services stay concurrent
(Kinesis reads long-poll).

Usage: moto-server.py <host> <port>
"""

import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple

app = DomainDispatcherApplication(create_backend_app)
dynamodb = threading.Lock()


def serve(environ, start_response):
    if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
        with dynamodb:
            # The whole response inside the lock: the write is done before the next request.
            return [b"".join(app(environ, start_response))]
    return app(environ, start_response)


if __name__ == "__main__":
    run_simple(
        sys.argv[1],
        int(sys.argv[2]),
        serve,
        threaded=True,
        request_handler=MotoRequestHandler,
    )

"""The one error type the SDK raises for a failed call: which service, where, the gRPC status and its details."""

import grpc

from k2.clients.settings import RETRYABLE


class K2Error(Exception):
    """A K2 service refused or failed a call, or could not be reached (code UNAVAILABLE).

    >>> import grpc
    >>> str(K2Error("query", "127.0.0.1:50053", grpc.StatusCode.UNAVAILABLE, "connection refused"))
    'query at 127.0.0.1:50053: UNAVAILABLE: connection refused'
    """

    def __init__(self, service: str, address: str, code: grpc.StatusCode, details: str):
        super().__init__(f"{service} at {address}: {code.name}: {details}")
        self.service = service
        self.address = address
        self.code = code
        self.details = details

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE

"""Container health check of a K2 service: grpc.health.v1 Check on 127.0.0.1:PORT; exit 0 only when SERVING.

Usage: python deploy/grpc_healthcheck.py PORT

Plaintext by default. With K2_HEALTHCHECK_CA_FILE set it speaks TLS, trusting that CA and checking the server
certificate against K2_HEALTHCHECK_SERVER_NAME (default localhost); K2_HEALTHCHECK_CERT_FILE and
K2_HEALTHCHECK_KEY_FILE add a client certificate for servers that require mTLS.
"""

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0


def _channel(target: str) -> grpc.Channel:
    ca_file = os.environ.get("K2_HEALTHCHECK_CA_FILE")
    if not ca_file:
        return grpc.insecure_channel(target)
    cert_file = os.environ.get("K2_HEALTHCHECK_CERT_FILE")
    key_file = os.environ.get("K2_HEALTHCHECK_KEY_FILE")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes(),
        private_key=Path(key_file).read_bytes() if key_file else None,
        certificate_chain=Path(cert_file).read_bytes() if cert_file else None)
    server_name = os.environ.get("K2_HEALTHCHECK_SERVER_NAME", "localhost")
    return grpc.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", server_name)])


def main() -> int:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: grpc_healthcheck.py PORT", file=sys.stderr)
        return 2
    with _channel(f"127.0.0.1:{sys.argv[1]}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                 timeout=TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {status}", file=sys.stderr)
        return 1
    print(status)
    return 0


if __name__ == "__main__":
    sys.exit(main())

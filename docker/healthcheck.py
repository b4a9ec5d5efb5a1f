"""The image's HEALTHCHECK: GET /health on the gateway's own port, with the standard library only.

The slim image carries no curl; python is there anyway. Exit 0 when /health answers 200, 1 otherwise
(Docker's convention). /health needs no key, even with metrics_auth on.
"""

import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("LORAGATE_PORT", "8000")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as exc:  # refused, timed out, or an HTTP error status
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

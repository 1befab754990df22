"""In-sandbox probe scripts shared by e2e modules (each prints one line per attempt)."""

# Connects to an allowed and a denied name on 443; prints `<host> REACH` or the error class.
EGRESS_PROBE = """
import socket
for host in ("api.openai.com", "evil.com"):
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect((host, 443)); print(host, "REACH")
    except OSError as e:
        print(host, type(e).__name__)
    finally:
        s.close()
"""

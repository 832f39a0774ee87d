# Shell helpers the test scripts share (sourced, not run).

# A free loopback TCP port.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Waits (30 s at most) until something on 127.0.0.1:$1 answers /healthz.
wait_healthy() {
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "nothing healthy on port $1" >&2
  return 1
}

#!/usr/bin/env bash
# A 3-node Ray cluster on ONE machine (head with 0 CPUs + 2 workers), token auth on, for multi-node tests.
#
#   cluster/local_cluster.sh start    # prints the address and an env file to source
#   source /tmp/grlc_$UID/env.sh      # RAY_ADDRESS, RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH
#   ray status; grounding train ... --address "$RAY_ADDRESS"
#   cluster/local_cluster.sh status
#   cluster/local_cluster.sh stop     # kills ONLY this cluster's processes (never `ray stop`)
#
# Isolation from other Ray instances on the machine: distinct ports (GCS 6391 by default), a separate
# --temp-dir per node under $GROUNDING_LC_DIR, and a private token file (~/.ray/auth_token is untouched).
# `stop` finds this cluster's processes by that unique directory in their command line, checks they
# belong to this user, and signals them by PID. `ray stop` would kill every Ray process on the machine.
#
# Environment knobs: GROUNDING_LC_DIR (default /tmp/grlc_$UID; keep it short: Unix socket paths are
# limited to ~107 bytes), GROUNDING_LC_PORT (GCS port, default 6391), GROUNDING_LC_WORKER_CPUS (1),
# GROUNDING_LC_WORKER_GPUS (0; logical GPUs let GPU code paths be scheduled on a CPU machine),
# GROUNDING_LC_OBJECT_STORE (bytes per node, default 200000000), RAY (the ray CLI, default: the repo's
# .venv, else the one on PATH; its folder goes first on every node's PATH, so jobs run that environment).
#
# Jobs: `ray job submit -- python -m rayjobs.<job> ...` after sourcing env.sh. Each node starts with that
# environment first on PATH, PYTHONPATH=<this repo> and GROUNDING_SHARED_FS=1 (all nodes share the disk).
set -euo pipefail

DIR="${GROUNDING_LC_DIR:-/tmp/grlc_$(id -u)}"
PORT="${GROUNDING_LC_PORT:-6391}"
WORKER_CPUS="${GROUNDING_LC_WORKER_CPUS:-1}"
WORKER_GPUS="${GROUNDING_LC_WORKER_GPUS:-0}"
OBJECT_STORE="${GROUNDING_LC_OBJECT_STORE:-200000000}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RAY="${RAY:-}"
if [[ -z "$RAY" ]]; then
  if [[ -x "$HERE/../.venv/bin/ray" ]]; then RAY="$HERE/../.venv/bin/ray"; else RAY="$(command -v ray)"; fi
fi
# The environment the ray CLI comes from (a venv's bin/) goes first on PATH for every node, so a job's
# `python` (ray job submit -- python -m rayjobs...) is the project's, not whatever python the shell has.
ENV_BIN="$(cd "$(dirname "$RAY")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
ADDRESS="127.0.0.1:${PORT}"
DASHBOARD_PORT=$((PORT + 2000))
NODES=(head w1 w2)

# PIDs of this user's processes whose command line mentions $1 (default: our cluster directory).
own_pids() {
  local pattern="${1:-$DIR/}" f pid
  # One grep over all cmdlines (NUL-separated; -a treats them as text). grep lists itself too, but it has
  # exited by the time we test /proc/$pid, so it drops out.
  for f in $(grep -alsF -- "$pattern" /proc/[0-9]*/cmdline 2>/dev/null); do
    pid="${f#/proc/}"
    pid="${pid%/cmdline}"
    [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
    [[ -d "/proc/$pid" && -O "/proc/$pid" ]] || continue  # still alive, and ours (same uid)
    echo "$pid"
  done
}

# Ports for node i: disjoint from Ray's defaults and from other nodes on this machine.
node_ports() {
  local i=$1 base=$((PORT + 100 + 10 * $1))
  echo "--node-manager-port=$base --object-manager-port=$((base + 1)) --metrics-export-port=$((base + 2))" \
       "--dashboard-agent-listen-port=$((base + 3)) --dashboard-agent-grpc-port=$((base + 4))" \
       "--runtime-env-agent-port=$((base + 5))" \
       "--min-worker-port=$((30000 + 500 * i)) --max-worker-port=$((30000 + 500 * i + 499))"
}

# Run `ray start` for one node; on failure kill that node's leftovers and try again. Why: the raylet
# waits only ~15 s for its dashboard agent, which a loaded 2-core machine can miss.
with_retries() {
  local node=$1 attempt
  shift
  for attempt in $(seq 1 "${GROUNDING_LC_RETRIES:-3}"); do
    if "$@" > "$DIR/$node.log" 2>&1; then return 0; fi
    echo "$node: ray start failed (attempt $attempt): $(grep -m1 -E 'Exception|Error' "$DIR/$node.log" || true)" >&2
    kill_matching "$DIR/$node/"
    sleep 2
  done
  cat "$DIR/$node.log" >&2
  stop
  exit 1
}

kill_matching() {  # $1: a directory; TERM then KILL this user's processes that mention it
  local pids pid n
  pids="$(own_pids "$1")"
  [[ -z "$pids" ]] && return 0
  for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
  for n in $(seq 1 50); do
    pids="$(own_pids "$1")"
    [[ -z "$pids" ]] && return 0
    sleep 0.2
  done
  for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
}

start() {
  if [[ -n "$(own_pids)" ]]; then
    echo "local cluster already running under $DIR (run: $0 stop)" >&2
    exit 1
  fi
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  # A private token for this cluster only; RAY_AUTH_TOKEN_PATH beats ~/.ray/auth_token.
  if [[ ! -s "$DIR/auth_token" ]]; then
    (umask 077; python3 -c 'import secrets; print(secrets.token_hex(32))' > "$DIR/auth_token")
  fi
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$DIR/auth_token" RAY_USAGE_STATS_ENABLED=0
  # Every Ray process (and so every job driver and worker) inherits the environment of `ray start`:
  # the project's python first on PATH, this checkout importable, and the storage check told that the
  # three nodes share one disk (a variable exported only in the submitting shell never reaches a job).
  export PATH="$ENV_BIN:$PATH" PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" GROUNDING_SHARED_FS=1
  # Generous start-up timeouts: on a busy 2-core machine the per-node agents can take > 15 s to come up.
  export RAY_raylet_start_wait_time_s="${RAY_raylet_start_wait_time_s:-180}"
  export RAY_agent_register_timeout_ms="${RAY_agent_register_timeout_ms:-180000}"
  export RAY_DASHBOARD_STARTUP_TIMEOUT_S="${RAY_DASHBOARD_STARTUP_TIMEOUT_S:-300}"  # `ray start` waits 60 s
  local t0 t1 node i
  t0=$(date +%s%N)
  # shellcheck disable=SC2046
  with_retries head "$RAY" start --head --port="$PORT" --num-cpus=0 --num-gpus=0 \
      --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --ray-client-server-port=$((PORT + 4000)) \
      --temp-dir="$DIR/head" --object-store-memory="$OBJECT_STORE" --disable-usage-stats $(node_ports 0)
  t1=$(date +%s%N)
  echo "head started in $(( (t1 - t0) / 1000000 )) ms"
  i=1
  for node in w1 w2; do
    t0=$(date +%s%N)
    # shellcheck disable=SC2046
    with_retries "$node" "$RAY" start --address="$ADDRESS" --num-cpus="$WORKER_CPUS" --num-gpus="$WORKER_GPUS" \
        --resources="{\"node_$node\": 1}" --temp-dir="$DIR/$node" --object-store-memory="$OBJECT_STORE" \
        --disable-usage-stats $(node_ports $i)
    t1=$(date +%s%N)
    echo "$node started in $(( (t1 - t0) / 1000000 )) ms"
    i=$((i + 1))
  done
  cat > "$DIR/env.sh" <<EOF
export RAY_ADDRESS=$ADDRESS
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$DIR/auth_token
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT  # for ray job submit/status/logs
export GROUNDING_SHARED_FS=1  # all three nodes share this machine's disk
EOF
  echo "address: $ADDRESS   dashboard: http://127.0.0.1:$DASHBOARD_PORT   (token auth on)"
  echo "use it:  source $DIR/env.sh"
}

status() {
  local pids
  pids="$(own_pids | tr '\n' ' ')"
  if [[ -z "${pids// /}" ]]; then echo "not running ($DIR)"; return 1; fi
  echo "running: $(echo "$pids" | wc -w) processes under $DIR"
  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$DIR/auth_token" "$RAY" status --address="$ADDRESS"
}

stop() {
  local n
  n="$(own_pids | wc -w)"
  if [[ "$n" == 0 ]]; then echo "nothing to stop under $DIR"; return 0; fi
  echo "stopping $n processes"
  kill_matching "$DIR/"
  rm -f "$DIR/env.sh"
  echo "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  address) echo "$ADDRESS" ;;
  *) echo "usage: $0 start|stop|status|address" >&2; exit 2 ;;
esac

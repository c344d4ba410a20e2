#!/usr/bin/env bash
# berth local demo: one "instance" in local mode runs a two-container set,
# survives a crash, retires itself when the preferred version changes, and a
# replacement instance boots the new version.
#
# Needs only a running Docker engine and a Rust toolchain: it builds its own
# tiny images (FROM scratch + a static busybox) and installs what it lacks.
# Everything listens on loopback. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/setup.sh

WEB_PORT=${BERTH_DEMO_WEB_PORT:-18080}
STATUS_ADDR=${BERTH_DEMO_STATUS_ADDR:-127.0.0.1:17878}
NS=berth-demo
work=$(mktemp -d /tmp/berth-demo.XXXXXX)
agent_pid=""

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  docker ps -aq --filter "label=berth.namespace=$NS" | xargs -r docker rm -f >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

say "building berth (debug; the first build takes several minutes)"
cargo build --bin berth
berth=$PWD/target/debug/berth

say "building the demo images berth-demo/web:1.0 and :2.0 (FROM scratch + busybox)"
for v in 1.0 2.0; do
  ctx=$work/img-$v
  mkdir -p "$ctx/www"
  cp "$(command -v busybox)" "$ctx/busybox"
  echo "hello from web $v" > "$ctx/www/index.html"
  cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY www /www
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
DOCKERFILE
  docker build -q -t "berth-demo/web:$v" "$ctx" >/dev/null
done
docker images berth-demo/web

cat > "$work/berth.toml" <<EOF
[agent]
namespace = "$NS"
status_addr = "$STATUS_ADDR"
data_dir = "$work/data"

[clusters.web]

[[clusters.web.containers]]
name = "web"
image = "berth-demo/web:{version}"
ports = ["127.0.0.1:$WEB_PORT:8080"]
stop_grace_period = "2s"
healthcheck = { test = ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"], interval = "1s", timeout = "1s", retries = 2 }

[[clusters.web.containers]]
name = "heartbeat"
image = "berth-demo/web:{version}"
command = ["sh", "-c", "trap 'exit 0' TERM; while true; do echo beat; sleep 1; done"]
depends_on = ["web"]
stop_grace_period = "2s"
EOF
cat > "$work/local.toml" <<EOF
# Stands in for IMDS (instance id, group) and the group's tags.
instance_id = "i-demo-0001"
group = "web"

[tags]
"berth:version" = "1.0"
EOF

say "the manifest and the local file"
cat "$work/berth.toml" "$work/local.toml"
"$berth" validate --config "$work/berth.toml" --local "$work/local.toml"

say "berth plan: what would run here"
"$berth" plan --config "$work/berth.toml" --local "$work/local.toml"

start_agent() {
  "$berth" run --config "$work/berth.toml" --local "$work/local.toml" >>"$work/agent.log" 2>&1 &
  agent_pid=$!
}
wait_for() { # wait_for DESCRIPTION SECONDS COMMAND...
  local what=$1 deadline=$(( $(date +%s) + $2 )); shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out waiting for $what; agent log:"; tail -30 "$work/agent.log"; exit 1; }
    sleep 0.2
  done
}
ready() { "$berth" status --addr "$STATUS_ADDR" --json | grep -q '"state": "ready"'; }
restarted() { "$berth" status --addr "$STATUS_ADDR" --json | grep -q '"restarts": 1'; }
page() { busybox wget -q -O - "http://127.0.0.1:$WEB_PORT/"; }

say "starting the agent (instance i-demo-0001), waiting until every container is running and healthy"
start_agent
wait_for "the agent to be ready" 60 ready
"$berth" status --addr "$STATUS_ADDR"
echo; echo "GET http://127.0.0.1:$WEB_PORT/ -> $(page)"

say "crash: kill -9 the web server's process from the host"
kill -9 "$(docker inspect -f '{{.State.Pid}}' "$NS-web")"
wait_for "the restart" 30 restarted
wait_for "the agent to be ready again" 30 ready
"$berth" status --addr "$STATUS_ADDR"
echo; echo "GET -> $(page)   (same container, restarted at once)"

say "operators prefer 2.0: the group's berth:version tag changes"
sed -i 's/"berth:version" = "1.0"/"berth:version" = "2.0"/' "$work/local.toml"
set +e; wait "$agent_pid"; code=$?; set -e; agent_pid=""
grep -E "drift detected|stopping|drained|retired" "$work/agent.log" | sed 's/\x1b\[[0-9;]*m//g'
echo "agent exited with code $code (3 = drained for retirement; on EC2 the group replaces the instance)"
[ "$code" -eq 3 ] || { echo "expected exit code 3"; exit 1; }

say "a replacement instance (i-demo-0002) boots and pins 2.0"
sed -i 's/i-demo-0001/i-demo-0002/' "$work/local.toml"
start_agent
wait_for "the replacement to be ready" 60 ready
"$berth" status --addr "$STATUS_ADDR"
echo; echo "GET -> $(page)"

say "stopping the agent (SIGTERM): the containers keep running"
kill -TERM "$agent_pid"; wait "$agent_pid" || true; agent_pid=""
docker ps --filter "label=berth.namespace=$NS" --format 'table {{.Names}}\t{{.Image}}\t{{.Status}}'
say "demo done; removing the demo containers"

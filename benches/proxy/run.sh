#!/usr/bin/env bash
# Proxy overhead benchmark: wrk against the same fast upstream (nginx returning a fixed
# OpenAI-style JSON body) directly, through nginx `proxy_pass` (without a log, and with a
# buffered access log of every call: nginx's own way to record calls), and through the
# pipeline's proxy source (feeding windows and a null sink), in one run on this machine; also
# through the hyper floor (benches' `hyper-proxy-floor`: hyper server and client with the
# source's structure and no capture), the most a hyper-based proxy of this shape can reach.
#
#   benches/proxy/run.sh [duration=15s] [connections=64]
#   (RATE=5000: the fixed-rate part's rate; ROUNDS=3: rounds of every path in turn, since a
#   shared machine has slow spells and one pass can land in one; LATENCY_ROUNDS=ROUNDS: rounds
#   of the fixed-rate part, whose summary gives a 95 % interval for the added latency's median
#   from 6 rounds on; PIPELINE=path: another pipeline binary, e.g. an earlier build kept aside
#   for an A/B; CPU_ROUNDS=3: rounds of the CPU-per-call measurement, 0 to skip; CALLGRIND=1:
#   also count the proxy's instructions per call under valgrind's callgrind, which is
#   repeatable whatever else the machine is doing; SYSCALLS=1: also count each proxy's system
#   calls per call under strace; CLOSE_ROUNDS=ROUNDS: rounds of the part where every call
#   comes on a new client connection, 0 to skip; CLOSE_CONNECTIONS=16: its connections;
#   PAIRS=0: pairs of runs of nginx and the proxy alone, in ABBA order, for the ratio's median
#   and its confidence interval; PAIR_DURATION=5s: each run of a pair;
#   PROXY_SETTINGS='key = value': more settings for the proxy source, e.g.
#   'upstream_keepalive = 0'; UPSTREAM_TLS=1: the upstream speaks HTTPS only (HTTP/1.1 by
#   ALPN, a throwaway CA made with openssl), nginx proxies with `proxy_pass https://`,
#   `proxy_ssl_session_reuse` and verification on, the proxy source with `upstream_ca_file`;
#   the direct call is then HTTPS too, and the hyper floor is left out)
#
# Then, at a fixed rate (benches' `fixed-rate` tool, open loop), the latency each path adds
# over the direct call (direct, nginx, nginx + access log, the proxy source; the paths take
# turns in 1 s slices, so a slow spell of the machine weighs on each alike).
#
# Needs: wrk and nginx (Debian: apt-get install wrk nginx-light; openssl for UPSTREAM_TLS=1; strace and valgrind for
# SYSCALLS=1 and CALLGRIND=1), and a release build
# (cargo build --release -p pipeline -p benches). Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."
duration="${1:-15s}"
connections="${2:-64}"
rounds="${ROUNDS:-3}"
target="${CARGO_TARGET_DIR:-$HOME/.cache/pipeline-target}"
pipeline="${PIPELINE:-$target/release/pipeline}"
[ -x "$pipeline" ] || { echo "build first: cargo build --release -p pipeline" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { echo "nginx is missing: apt-get install nginx-light" >&2; exit 1; }
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"

# Every server here listens with SO_REUSEPORT, so a leftover from an earlier run on one of
# these ports would silently take a share of the connections: refuse to start instead.
for port in 18002 18443 18080 18081 18180 18181 19090 19091 19190; do
  if ss -Htln "sport = :$port" | grep -q .; then
    echo "port $port is already in use (a leftover from an earlier run?): $(ss -Htlnp "sport = :$port")" >&2
    exit 1
  fi
done

work="$(mktemp -d)"
cleanup() {
  [ -n "${proxy_pid:-}" ] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null || true
  if [ -n "${floor_pid:-}" ]; then kill "$floor_pid" 2>/dev/null && wait "$floor_pid" 2>/dev/null || true; fi
  if [ -n "${callgrind_pid:-}" ]; then kill "$callgrind_pid" 2>/dev/null && wait "$callgrind_pid" 2>/dev/null || true; fi
  for instance in upstream nginx-proxy; do
    "$nginx_bin" -p "$work/$instance" -c "$work/$instance/nginx.conf" -s quit 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# Two nginx instances: the upstream (one worker, the same for every path) and nginx as the
# proxy under comparison (its own process, `worker_processes auto` as Debian ships it). Were
# they one instance, nginx's proxy would hand each call to the upstream inside its own event
# loop — a hop no real proxy in front of a separate model API gets for free.
mkdir -p "$work/upstream" "$work/nginx-proxy"
tls="${UPSTREAM_TLS:-0}"
tls_server=""
if [ "$tls" = 1 ]; then
  command -v openssl >/dev/null || { echo "openssl is missing: apt-get install openssl" >&2; exit 1; }
  # A throwaway CA and a certificate for localhost, ECDSA P-256 as most providers' are.
  mkdir -p "$work/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
    -keyout "$work/tls/ca.key" -out "$work/tls/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$work/tls/server.key" -out "$work/tls/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost\n' > "$work/tls/san.ext"
  openssl x509 -req -in "$work/tls/server.csr" -CA "$work/tls/ca.pem" -CAkey "$work/tls/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/tls/san.ext" -out "$work/tls/server.pem" 2>/dev/null
  # HTTP/1.1 only (no `http2`): nginx's proxy_pass speaks HTTP/1.1 upstream, so both proxies
  # are measured over the same protocol.
  tls_server="server {
    listen 127.0.0.1:18443 ssl reuseport;
    ssl_certificate $work/tls/server.pem;
    ssl_certificate_key $work/tls/server.key;
    ssl_session_cache shared:TLS:10m;
    keepalive_requests 10000000;
    location / {
      default_type application/json;
      return 200 '{\"id\":\"x\",\"object\":\"chat.completion\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hello\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5,\"total_tokens\":17}}';
    }
  }"
  upstream_url="https://localhost:18443"
  proxy_upstream="https://model_api"
  nginx_upstream_server="127.0.0.1:18443"
  nginx_tls_settings="proxy_ssl_session_reuse on;
  proxy_ssl_verify on;
  proxy_ssl_trusted_certificate $work/tls/ca.pem;
  proxy_ssl_name localhost;
  proxy_ssl_server_name on;"
  proxy_tls_settings="upstream_ca_file = \"$work/tls/ca.pem\""
  fixed_rate_tls=(--ca-file "$work/tls/ca.pem")
else
  upstream_url="http://127.0.0.1:18002"
  proxy_upstream="http://model_api"
  nginx_upstream_server="127.0.0.1:18002"
  nginx_tls_settings=""
  proxy_tls_settings=""
  fixed_rate_tls=()
fi
direct_url="$upstream_url/v1/chat/completions"
cat > "$work/upstream/nginx.conf" <<NGINX
worker_processes 1;
pid $work/upstream/nginx.pid;
error_log $work/upstream/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:18002 reuseport;
    location / {
      default_type application/json;
      return 200 '{"id":"x","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}';
    }
  }
  $tls_server
}
NGINX
# nginx as the proxy under comparison, in directory $1, the call log's server on port $2 + 1;
# $3: how its processes run.
nginx_proxy_conf() {
  local dir="$1" port="$2" processes="$3"
  mkdir -p "$dir"
  cat > "$dir/nginx.conf" <<NGINX
$processes
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream model_api { server $nginx_upstream_server; keepalive 256; keepalive_requests 10000000; }
  $nginx_tls_settings
  # Both servers below: keep-alive to the upstream, X-Forwarded-For as the proxy source adds it.
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  server {
    listen 127.0.0.1:$port reuseport;
    location / {
      proxy_pass $proxy_upstream;
    }
  }
  # The same proxy recording every call the way nginx can: a buffered access log of each
  # call's fields (what the proxy source's event holds, short of the model and token counts,
  # which nginx cannot read from bodies).
  log_format call escape=json '{"time":"\$time_iso8601","request_id":"\$request_id",'
    '"method":"\$request_method","uri":"\$uri","status":\$status,'
    '"latency_s":\$request_time,"ttfb_s":"\$upstream_header_time",'
    '"request_bytes":\$request_length,"response_bytes":\$bytes_sent,'
    '"upstream":"\$upstream_addr"}';
  server {
    listen 127.0.0.1:$((port + 1)) reuseport;
    access_log $dir/calls.log call buffer=64k flush=1s;
    location / {
      proxy_pass $proxy_upstream;
    }
  }
}
NGINX
}
nginx_proxy_conf "$work/nginx-proxy" 18080 "worker_processes auto;"
for instance in upstream nginx-proxy; do
  "$nginx_bin" -p "$work/$instance" -c "$work/$instance/nginx.conf"
done

cat > "$work/pipelines.toml" <<TOML
[sources.calls]
type = "proxy"
listen = "127.0.0.1:19090"
admin_listen = "127.0.0.1:19091"
upstream = "$upstream_url"
$proxy_tls_settings
${PROXY_SETTINGS:-}

[operators.per_10s]
type = "window"
inputs = ["calls"]
size = "10s"

[sinks.out]
type = "null"
inputs = ["per_10s"]
TOML
# Each server under test runs in a session of its own (setsid), as nginx does once it has
# daemonized. With the kernel's autogroup scheduling (kernel.sched_autogroup_enabled, on by
# default on most distributions) the processes of one session share one scheduling entity: a
# proxy started in this script's session shared it with wrk and left 4–10 % of the machine
# idle at full load (/proc/stat), where the same proxy in a session of its own, like nginx,
# left 2–3 %.
setsid "$pipeline" run --config "$work/pipelines.toml" > "$work/pipeline.out" 2> "$work/pipeline.err" &
proxy_pid=$!
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:19091/health >/dev/null 2>&1 && break
  sleep 0.1
done

# The floor: a bare hyper proxy with the source's structure and none of its work (no header
# rewriting, no body taps, no event), so hyper's own cost and the source's can be told apart.
floor="$target/release/hyper-proxy-floor"
if [ "$tls" = 1 ]; then
  echo "(no hyper floor rows: it speaks cleartext HTTP to its upstream only)"
elif [ -x "$floor" ]; then
  setsid "$floor" --listen 127.0.0.1:19190 --upstream 127.0.0.1:18002 > "$work/floor.log" 2>&1 &
  floor_pid=$!
  for _ in $(seq 100); do
    curl -sf -o /dev/null http://127.0.0.1:19190/ 2>/dev/null && break
    sleep 0.1
  done
else
  echo "(no hyper floor rows: build it with cargo build --release -p pipeline -p benches)"
fi

cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'
wrk.headers["Content-Type"] = "application/json"
LUA

# nginx's access log holds about 250 bytes per call: emptied after each run (nginx appends, so
# it keeps writing at the new end) rather than left to grow to a gigabyte over a long run.
truncate_call_log() {
  : > "$work/nginx-proxy/calls.log"
}

run() {
  local name="$1" url="$2"
  wrk -t1 -c"$connections" -d"$duration" --latency -s "$work/post.lua" "$url" > "$work/$name.txt"
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/$name.txt")
  p50=$(awk '$1=="50%" {print $2}' "$work/$name.txt")
  p99=$(awk '$1=="99%" {print $2}' "$work/$name.txt")
  printf '| %-34s | %12s | %10s | %10s |\n' "$name" "$rps" "$p50" "$p99"
  truncate_call_log
}

# nginx's worker processes (started by now: the proxies above took their time), for the CPU
# and system-call counts.
nginx_workers=$(pgrep -P "$(cat "$work/nginx-proxy/nginx.pid")" | tr '\n' ' ')
echo "wrk -t1 -c$connections -d$duration, POST JSON, on $(nproc) cores, $rounds round(s) of every path in turn; upstream $upstream_url"
printf '| %-34s | %12s | %10s | %10s |\n' "path" "requests/s" "p50" "p99"
printf '|%s|%s|%s|%s|\n' "------------------------------------" "--------------" "------------" "------------"
for _ in $(seq "$rounds"); do
  run "direct (nginx upstream)" "$direct_url"
  run "nginx proxy_pass" "http://127.0.0.1:18080/v1/chat/completions"
  run "nginx proxy_pass + access log" "http://127.0.0.1:18081/v1/chat/completions"
  run "pipeline proxy (events -> window)" "http://127.0.0.1:19090/v1/chat/completions"
  if [ -n "${floor_pid:-}" ]; then
    run "hyper floor (no capture)" "http://127.0.0.1:19190/v1/chat/completions"
  fi
done

# Paired comparison of maximum throughput, the proxy against nginx `proxy_pass` alone: PAIRS
# pairs of wrk runs (PAIR_DURATION each), the order reversed every other pair (ABBA), so a
# drift of the machine's speed weighs on both alike. Each pair gives a ratio, proxy over
# nginx; the summary gives their median with a distribution-free 95 % confidence interval for
# it (order statistics of the binomial sign test; no assumption about the spread's shape) and
# in how many pairs the proxy was at least level. A round of every path in turn leaves up to
# a minute between the proxy's run and nginx's; a pair leaves none.
pair_rate() {
  wrk -t1 -c"$connections" -d"$2" -s "$work/post.lua" "$1" | awk '/Requests\/sec/ {print $2}'
}
positive() {
  awk -v rate="$1" 'BEGIN { exit !(rate + 0 > 0) }'
}
if [ "${PAIRS:-0}" -gt 0 ]; then
  pair_duration="${PAIR_DURATION:-5s}"
  nginx_url=http://127.0.0.1:18080/v1/chat/completions
  proxy_url=http://127.0.0.1:19090/v1/chat/completions
  echo
  echo "pairs: wrk -t1 -c$connections -d$pair_duration, nginx proxy_pass and the pipeline proxy, $PAIRS pairs in ABBA order"
  printf '| %4s | %-14s | %14s | %14s | %8s |\n' "pair" "order" "nginx req/s" "proxy req/s" "ratio"
  ratios=()
  for pair in $(seq "$PAIRS"); do
    if [ $((pair % 2)) = 1 ]; then
      order="nginx, proxy"
      nginx_rps=$(pair_rate "$nginx_url" "$pair_duration")
      proxy_rps=$(pair_rate "$proxy_url" "$pair_duration")
    else
      order="proxy, nginx"
      proxy_rps=$(pair_rate "$proxy_url" "$pair_duration")
      nginx_rps=$(pair_rate "$nginx_url" "$pair_duration")
    fi
    if ! positive "$nginx_rps" || ! positive "$proxy_rps"; then
      echo "pair $pair: wrk reported no calls (nginx: '$nginx_rps', proxy: '$proxy_rps' req/s); is every server still up?" >&2
      exit 1
    fi
    ratio=$(awk -v p="$proxy_rps" -v n="$nginx_rps" 'BEGIN { printf "%.3f", p / n }')
    ratios+=("$ratio")
    printf '| %4s | %-14s | %14s | %14s | %8s |\n' "$pair" "$order" "$nginx_rps" "$proxy_rps" "$ratio"
  done
  printf '%s\n' "${ratios[@]}" | sort -g | awk '
    { ratio[NR] = $1; if ($1 >= 1) level++ }
    END {
      n = NR
      median = n % 2 ? ratio[(n + 1) / 2] : (ratio[n / 2] + ratio[n / 2 + 1]) / 2
      # The largest k with P(Binomial(n, 1/2) <= k - 1) <= 0.025: [ratio[k], ratio[n - k + 1]]
      # covers the median with at least 95 % confidence.
      pmf = 0.5 ^ n; cdf = pmf; k = 0
      for (i = 0; i < n && cdf <= 0.025; i++) { k = i + 1; pmf = pmf * (n - i) / (i + 1); cdf += pmf }
      if (k >= 1) interval = sprintf("95 %% interval %.3f–%.3f", ratio[k], ratio[n - k + 1])
      else interval = "too few pairs for a 95 % interval (at least 6)"
      printf "proxy / nginx over %d pairs: median %.3f, %s, range %.3f–%.3f; the proxy at least level in %d of %d\n",
        n, median, interval, ratio[1], ratio[n], level, n
    }'
fi

# Clients that open a new connection for every call (`Connection: close`, as many scripts and
# some gateways do): each path then accepts a connection per call, and a proxy must not also
# connect upstream per call — nginx keeps its upstream connections (`keepalive`), the proxy
# source its workers' idle ones (`upstream_keepalive`); the floor connects upstream per client
# connection.
close_connections="${CLOSE_CONNECTIONS:-16}"
run_close() {
  local name="$1" url="$2"
  wrk -t1 -c"$close_connections" -d"$duration" -H "Connection: close" -s "$work/post.lua" "$url" > "$work/$name.txt"
  printf '| %-34s | %12s |\n' "$name" "$(awk '/Requests\/sec/ {print $2}' "$work/$name.txt")"
  truncate_call_log
}
if [ "${CLOSE_ROUNDS:-$rounds}" -gt 0 ]; then
  echo
  echo "wrk -t1 -c$close_connections -d$duration with Connection: close (a new client connection per call), ${CLOSE_ROUNDS:-$rounds} round(s)"
  printf '| %-34s | %12s |\n' "path" "requests/s"
  printf '|%s|%s|\n' "------------------------------------" "--------------"
  for _ in $(seq "${CLOSE_ROUNDS:-$rounds}"); do
    run_close "direct (nginx upstream)" "$direct_url"
    run_close "nginx proxy_pass" "http://127.0.0.1:18080/v1/chat/completions"
    run_close "pipeline proxy (events -> window)" "http://127.0.0.1:19090/v1/chat/completions"
    if [ -n "${floor_pid:-}" ]; then
      run_close "hyper floor (no capture)" "http://127.0.0.1:19190/v1/chat/completions"
    fi
  done
fi

# Added latency at a fixed, realistic rate (open loop: no coordinated omission).
fixed_rate="$target/release/fixed-rate"
if [ -x "$fixed_rate" ]; then
  echo
  "$fixed_rate" --rate "${RATE:-5000}" --duration "$duration" --rounds "${LATENCY_ROUNDS:-$rounds}" \
    "${fixed_rate_tls[@]}" "$direct_url" \
    http://127.0.0.1:18080/v1/chat/completions \
    http://127.0.0.1:18081/v1/chat/completions \
    http://127.0.0.1:19090/v1/chat/completions
else
  echo "(build the fixed-rate tool for the added-latency table: cargo build --release -p pipeline -p benches; building benches alone resolves other features and rebuilds the dependency set)"
fi
health=$(curl -s http://127.0.0.1:19091/health)
echo "pipeline proxy /health after the run: $health"

# CPU per call: each process's utime + stime (from /proc/<pid>/stat, in clock ticks) around a
# 5 s wrk run at 64 connections after 2 s of warm-up, divided by the calls wrk completed. For
# nginx the sum over its worker processes; the upstream's CPU is not counted for either.
ticks_per_second=$(getconf CLK_TCK)
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
# TCP segments sent on this machine (every connection: client, proxy and upstream), from the
# kernel's counters: how many packets a call costs the loopback, whoever sends them.
tcp_segments_sent() {
  awk '/^Tcp:/ { if (!header) { for (i = 1; i <= NF; i++) if ($i == "OutSegs") column = i; header = 1 } else print $column }' /proc/net/snmp
}
cpu_per_call() {
  local name="$1" url="$2"; shift 2
  wrk -t1 -c64 -d2s -s "$work/post.lua" "$url" > /dev/null
  local before calls after segments_before segments_after
  before=$(cpu_ticks "$@")
  segments_before=$(tcp_segments_sent)
  calls=$(wrk -t1 -c64 -d5s -s "$work/post.lua" "$url" | awk '/requests in/ {print $1}')
  segments_after=$(tcp_segments_sent)
  after=$(cpu_ticks "$@")
  awk -v name="$name" -v calls="$calls" -v ticks=$((after - before)) -v hz="$ticks_per_second" \
    -v segments=$((segments_after - segments_before)) \
    'BEGIN { printf "| %-34s | %10.0f | %14.1f | %14.2f |\n", name, calls / 5, ticks / hz * 1e6 / calls, segments / calls }'
  truncate_call_log
}
if [ "${CPU_ROUNDS:-3}" -gt 0 ]; then
  echo
  echo "CPU per call (utime + stime over a 5 s wrk run, 64 connections, after 2 s warm-up), and TCP segments sent per call on the machine"
  printf '| %-34s | %10s | %14s | %14s |\n' "path" "calls/s" "CPU µs / call" "segments / call"
  for _ in $(seq "${CPU_ROUNDS:-3}"); do
    cpu_per_call "pipeline proxy (events -> window)" "http://127.0.0.1:19090/v1/chat/completions" "$proxy_pid"
    # shellcheck disable=SC2086
    cpu_per_call "nginx proxy_pass" "http://127.0.0.1:18080/v1/chat/completions" $nginx_workers
    # shellcheck disable=SC2086
    cpu_per_call "nginx proxy_pass + access log" "http://127.0.0.1:18081/v1/chat/completions" $nginx_workers
    if [ -n "${floor_pid:-}" ]; then
      cpu_per_call "hyper floor (no capture)" "http://127.0.0.1:19190/v1/chat/completions" "$floor_pid"
    fi
  done
fi

# System calls per call: strace -c on each proxy's processes (every thread) over a 5 s wrk run
# at 64 connections. strace slows each call a lot, so only the counts mean anything, not the
# rate; they show whether one proxy makes the kernel do more work per call than another.
syscalls_per_call() {
  local name="$1" url="$2" attach=() pid calls
  shift 2
  for pid in "$@"; do attach+=(-p "$pid"); done
  strace -c -f -o "$work/strace.txt" "${attach[@]}" 2> /dev/null &
  local strace_pid=$!
  sleep 1
  calls=$(wrk -t1 -c64 -d5s -s "$work/post.lua" "$url" | awk '/requests in/ {print $1}')
  kill -INT "$strace_pid" && wait "$strace_pid" 2>/dev/null || true
  awk -v name="$name" -v calls="$calls" '
    $NF == "total" { total = $4 / calls }
    $1 ~ /^[0-9.]+$/ && $NF != "total" && $4 / calls >= 0.05 {
      each = each sprintf("%s%s %.2f", each == "" ? "" : ", ", $NF, $4 / calls)
    }
    END { printf "| %-34s | %8s | %10.2f | %-50s |\n", name, calls, total, each }
  ' "$work/strace.txt"
  truncate_call_log
}
if [ "${SYSCALLS:-0}" = 1 ]; then
  command -v strace >/dev/null || { echo "strace is missing: apt-get install strace" >&2; exit 1; }
  echo
  echo "system calls per call (strace -c, every thread, 5 s wrk run at 64 connections)"
  printf '| %-34s | %8s | %10s | %-50s |\n' "path" "calls" "per call" "each (at least 0.05 per call)"
  syscalls_per_call "pipeline proxy (events -> window)" "http://127.0.0.1:19090/v1/chat/completions" "$proxy_pid"
  # shellcheck disable=SC2086
  syscalls_per_call "nginx proxy_pass" "http://127.0.0.1:18080/v1/chat/completions" $nginx_workers
  # shellcheck disable=SC2086
  syscalls_per_call "nginx proxy_pass + access log" "http://127.0.0.1:18081/v1/chat/completions" $nginx_workers
  if [ -n "${floor_pid:-}" ]; then
    syscalls_per_call "hyper floor (no capture)" "http://127.0.0.1:19190/v1/chat/completions" "$floor_pid"
  fi
fi

# Instructions per call, user space only: each proxy under callgrind (nginx as one worker in
# the foreground, its config otherwise the same), counters zeroed after a warm-up, a 10 s wrk
# run at 4 connections (valgrind runs one thread at a time, slowly).
callgrind_per_call() {
  local name="$1" url="$2" ready="$3" out="$work/callgrind-$4"
  shift 4
  valgrind --tool=callgrind --callgrind-out-file="$out.out" "$@" > "$out.log" 2>&1 &
  callgrind_pid=$!
  local pid=$callgrind_pid calls instructions
  for _ in $(seq 300); do
    curl -sf -o /dev/null "$ready" 2>/dev/null && break
    sleep 0.2
  done
  wrk -t1 -c4 -d3s -s "$work/post.lua" "$url" > /dev/null
  callgrind_control -z "$pid" > /dev/null 2>&1
  calls=$(wrk -t1 -c4 -d10s -s "$work/post.lua" "$url" | awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" > /dev/null 2>&1
  sleep 1
  instructions=$(callgrind_annotate --auto=no "$out".out.* 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  callgrind_pid=""
  printf '| %-34s | %8s | %22s |\n' "$name" "$calls" "$((instructions / calls))"
}
if [ "${CALLGRIND:-0}" = 1 ]; then
  command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
  echo
  echo "callgrind (the whole process, user space)"
  printf '| %-34s | %8s | %22s |\n' "path" "calls" "instructions / call"
  kill "$proxy_pid" && wait "$proxy_pid" 2>/dev/null || true
  proxy_pid=""
  callgrind_per_call "pipeline proxy (events -> window)" http://127.0.0.1:19090/v1/chat/completions \
    http://127.0.0.1:19091/health proxy "$pipeline" run --config "$work/pipelines.toml"
  if [ -n "${floor_pid:-}" ]; then
    kill "$floor_pid" && wait "$floor_pid" 2>/dev/null || true
    floor_pid=""
    callgrind_per_call "hyper floor (no capture)" http://127.0.0.1:19190/v1/chat/completions \
      http://127.0.0.1:19190/ floor "$floor" --listen 127.0.0.1:19190 --upstream 127.0.0.1:18002
  fi
  nginx_proxy_conf "$work/nginx-callgrind" 18180 "worker_processes 1; master_process off; daemon off;"
  callgrind_per_call "nginx proxy_pass" http://127.0.0.1:18180/v1/chat/completions \
    http://127.0.0.1:18180/ nginx "$nginx_bin" -p "$work/nginx-callgrind" -c "$work/nginx-callgrind/nginx.conf"
  callgrind_per_call "nginx proxy_pass + access log" http://127.0.0.1:18181/v1/chat/completions \
    http://127.0.0.1:18181/ nginx-log "$nginx_bin" -p "$work/nginx-callgrind" -c "$work/nginx-callgrind/nginx.conf"
fi

#!/usr/bin/env bash
# A one-node Kubernetes cluster for the end-to-end tests, assembled from Debian's packages:
# the control plane and node binaries built by kube-apiserver.sh (Debian's `kubernetes`
# source), containerd + runc + the CNI plugins, dnsmasq as the cluster DNS, and a pause
# image built here (no image registry is reachable).  Everything it writes lives under DIR
# (and the caches under ~/.cache/modelyard); what it changes on the machine (an
# interface, a bridge, iptables chains, a few sysctls) is undone by `stop`.
#
#   tests/cluster/node.sh build          # packages, binaries, pause image (cached)
#   tests/cluster/node.sh start DIR      # cluster up, node Ready; writes DIR/kubeconfig
#   tests/cluster/node.sh import DIR OCI_ARCHIVE...   # images into the node's containerd
#   tests/cluster/node.sh stop DIR       # stops only what start recorded, restores the machine
#   tests/cluster/node.sh python         # the interpreter start runs the DNS sync with (PYTHON, else .venv)
#
# Only one node runs per machine: it owns NODE_IP and the fixed ports below.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE_ROOT="${MODELYARD_CACHE_DIR:-$HOME/.cache/modelyard}"
export NODE_IP=10.245.0.1            # on an interface of its own: nothing listens outward
NODE_NET=10.245.0.0/24
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16            # as kube-apiserver.sh gives the apiserver
NODE_NAME=modelyard-node
NODE_LINK=modelyard0       # a bridge with no ports: this kernel has no dummy interfaces
BRIDGE=modelyard-cni0
GUARD=MODELYARD-GUARD
PAUSE_IMAGE=localhost/modelyard-pause:1
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
         kernel.keys.root_maxbytes net.ipv4.ip_forward net.ipv4.conf.all.route_localnet
         net.bridge.bridge-nf-call-iptables)
log() { echo "node.sh: $*" >&2; }

# The interpreter for dns_sync.py, which needs the kubernetes client: PYTHON, else the project's
# virtualenv (make venv), else python3 when it has the client.
python_with_kubernetes() {
  local candidate
  for candidate in "${PYTHON:-}" "$HERE/../../.venv/bin/python" python3; do
    [ -n "$candidate" ] || continue
    if "$candidate" -c 'import kubernetes' 2>/dev/null; then echo "$candidate"; return; fi
    if [ "$candidate" = "${PYTHON:-}" ]; then log "PYTHON=$PYTHON cannot import kubernetes; trying the others"; fi
  done
  log "no Python with the kubernetes client: run \`make venv\` (the project's .venv), or set PYTHON to an interpreter with \`pip install 'kubernetes<37'\`"
  return 1
}

apt_deps() {
  local missing=() pkg
  for pkg in containerd runc containernetworking-plugins buildah dnsmasq-base iptables conntrack iproute2 \
             debootstrap gcc libc6-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Debian's containerd package starts the system's daemon; the node runs its own.
  if command -v systemctl >/dev/null && systemctl is-active -q containerd 2>/dev/null; then
    systemctl stop containerd || true
  fi
}

# A pause image from a few lines of C: sleep, reap children, exit on a signal.
pause_archive() {
  local archive="$CACHE_ROOT/images/pause-1.tar"
  if [ ! -f "$archive" ]; then
    local work; work=$(mktemp -d)
    cat > "$work/pause.c" <<'C'
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
static void quit(int sig) { (void)sig; _exit(0); }
int main(void) {
  signal(SIGINT, quit); signal(SIGTERM, quit); signal(SIGCHLD, reap);
  for (;;) pause();
}
C
    gcc -static -Os -o "$work/pause" "$work/pause.c"
    mkdir -p "$CACHE_ROOT/images"
    bash "$HERE/images.sh" scratch-image "$PAUSE_IMAGE" "$work/pause" /pause "$archive"
    rm -rf "$work"
  fi
  echo "$archive"
}

build() {
  apt_deps
  bash "$HERE/kube-apiserver.sh" build >/dev/null
  pause_archive >/dev/null
}

binary() { bash "$HERE/kube-apiserver.sh" binary "$1"; }

outward_interface() { ip -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1); exit}'; }

# Record the machine's values once, so stop can put them back.
save_sysctls() {
  local dir=$1 name
  : > "$dir/sysctls.saved"
  for name in "${SYSCTLS[@]}"; do
    if sysctl -n "$name" >/dev/null 2>&1; then echo "$name=$(sysctl -n "$name")" >> "$dir/sysctls.saved"; fi
  done
}

restore_sysctls() {
  local dir=$1 line
  [ -f "$dir/sysctls.saved" ] || return 0
  while IFS= read -r line; do sysctl -q -w "$line" >/dev/null 2>&1 || true; done < "$dir/sysctls.saved"
  rm -f "$dir/sysctls.saved"
}

# Pod and Service traffic never leaves the machine: dropped as it would leave by the outward
# interface (mangle POSTROUTING sees the interface after kube-proxy's rewrite; filter OUTPUT
# would see it before and break ClusterIP).  Nothing is masqueraded by the CNI.
guard_network() {
  local out; out=$(outward_interface)
  iptables -t mangle -N "$GUARD" 2>/dev/null || iptables -t mangle -F "$GUARD"
  local range
  for range in "$POD_CIDR" "$SERVICE_CIDR" "$NODE_NET"; do
    iptables -t mangle -A "$GUARD" -s "$range" -j DROP
    iptables -t mangle -A "$GUARD" -d "$range" -j DROP
  done
  if [ -n "$out" ]; then
    iptables -t mangle -C POSTROUTING -o "$out" -j "$GUARD" 2>/dev/null \
      || iptables -t mangle -I POSTROUTING 1 -o "$out" -j "$GUARD"
    echo "$out" > "$DIR/guard.interface"
  fi
}

unguard_network() {
  local out; out=$(cat "$DIR/guard.interface" 2>/dev/null || true)
  [ -n "$out" ] && iptables -t mangle -D POSTROUTING -o "$out" -j "$GUARD" 2>/dev/null || true
  iptables -t mangle -F "$GUARD" 2>/dev/null || true
  iptables -t mangle -X "$GUARD" 2>/dev/null || true
  rm -f "$DIR/guard.interface"
}

# The kubelet's and kube-proxy's own chains (KUBE-*; `kube-proxy --cleanup` leaves some): the
# jumps to them from the built-in chains first, then the chains.  Only this node makes them.
remove_kube_chains() {
  local table rule chain
  for table in filter nat mangle; do
    iptables -t "$table" -S | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j KUBE-' \
      | sed 's/^-A/-D/' | while IFS= read -r rule; do eval iptables -t "$table" "$rule"; done
    for chain in $(iptables -t "$table" -S | awk '/^-N KUBE-/ {print $2}'); do iptables -t "$table" -F "$chain"; done
    for chain in $(iptables -t "$table" -S | awk '/^-N KUBE-/ {print $2}'); do iptables -t "$table" -X "$chain"; done
  done
}

write_configs() {
  local root=$DIR
  mkdir -p "$root/containerd" "$root/cni/net.d" "$root/cni/networks" "$root/kubelet" "$root/varlog" \
           "$root/dns/hosts.d" "$root/logs"
  cat > "$root/containerd/config.toml" <<TOML
version = 2
root = "$root/containerd/root"
state = "$root/containerd/state"
[grpc]
  address = "$root/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$root/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Processes here lack CAP_SYS_RESOURCE: a sandbox's negative oom_score_adj would make runc fail.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$root/cni/net.d"
TOML
  cat > "$root/cni/net.d/10-modelyard.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "modelyard", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "$root/cni/networks"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
  cat > "$root/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Test node only: anyone who reaches the kubelet (only the apiserver, on NODE_IP) may use it.
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
cgroupDriver: cgroupfs
failSwapOn: false
enforceNodeAllocatable: []
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: ""
evictionHard: {memory.available: "200Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
YAML
  # The node's components act as cluster admins (test node only).
  cp "$root/kubeconfig" "$root/node.kubeconfig"
}

start_recorded() {  # NAME COMMAND...: runs in the background, PID in DIR/NAME.pid, output in DIR/logs/NAME.log
  local name=$1; shift
  "$@" >"$DIR/logs/$name.log" 2>&1 &
  echo $! > "$DIR/$name.pid"
}

# kubelet 1.20 hard-codes /var/log/pods, /var/log/containers and its device-plugin directory and
# removes entries it does not know: it and containerd share a private mount namespace in which
# those paths are bound from DIR, so the machine's own directories are never touched.
start_mount_namespace() {
  start_recorded namespace unshare --mount --propagation slave sleep infinity
  local holder; holder=$(cat "$DIR/namespace.pid")
  for _ in $(seq 50); do [ "$(readlink /proc/"$holder"/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ] && break; sleep 0.1; done
  INSIDE=(nsenter --target "$holder" --mount --)
  mkdir -p "$DIR/varlog/pods" "$DIR/varlog/containers" "$DIR/kubelet/root" "$DIR/run" "$DIR/netns" /run/containerd \
           /run/netns
  "${INSIDE[@]}" mount --bind "$DIR/varlog" /var/log
  # /var/lib inside: only the kubelet's root and libcni's cache, not the machine's.
  "${INSIDE[@]}" mount -t tmpfs tmpfs /var/lib --options size=16m
  "${INSIDE[@]}" mkdir -p /var/lib/kubelet
  "${INSIDE[@]}" mount --bind "$DIR/kubelet/root" /var/lib/kubelet
  # containerd's shims keep their sockets and runc its state under /run/containerd.
  "${INSIDE[@]}" mount --bind "$DIR/run" /run/containerd
  # The pods' network namespaces are pinned by files there: they vanish with this namespace.
  "${INSIDE[@]}" mount --bind "$DIR/netns" /run/netns
}

start() {
  DIR=$(mkdir -p "$1" && cd "$1" && pwd -P)
  [ -n "$(binary kubelet)" ] || build
  [ -f "$DIR/apiserver.pid" ] && { log "a node already runs from $DIR"; exit 1; }
  local python; python=$(python_with_kubernetes) || exit 1   # checked before anything starts
  local started=$SECONDS
  trap 'status=$?; if [ $status -ne 0 ]; then log "start failed; stopping what started"; stop "$DIR"; fi' EXIT
  mkdir -p "$DIR/logs"
  save_sysctls "$DIR"
  ip link show "$NODE_LINK" >/dev/null 2>&1 || ip link add "$NODE_LINK" type bridge
  ip addr replace "$NODE_IP/24" dev "$NODE_LINK"
  ip link set "$NODE_LINK" up
  guard_network
  sysctl -q -w net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 >/dev/null

  bash "$HERE/kube-apiserver.sh" start "$DIR" rbac
  write_configs

  start_recorded scheduler "$(binary kube-scheduler)" --kubeconfig "$DIR/node.kubeconfig" \
    --bind-address 127.0.0.1 --port 0 --secure-port 0 --leader-elect=false
  start_recorded controller-manager "$(binary kube-controller-manager)" --kubeconfig "$DIR/node.kubeconfig" \
    --bind-address 127.0.0.1 --port 0 --secure-port 0 --leader-elect=false \
    --service-account-private-key-file "$DIR/certs/sa.key" --root-ca-file "$DIR/certs/apiserver.crt" \
    --controllers '*,-nodeipam' --cluster-cidr 10.244.0.0/16 --allocate-node-cidrs=false

  start_mount_namespace
  start_recorded containerd "${INSIDE[@]}" containerd --config "$DIR/containerd/config.toml"
  local sock="$DIR/containerd/containerd.sock"
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  ctr --address "$sock" -n k8s.io images import "$(pause_archive)" >/dev/null

  # AWS_EC2_METADATA_DISABLED: the kubelet's built-in credential lookup would call 169.254.169.254.
  start_recorded kubelet "${INSIDE[@]}" env AWS_EC2_METADATA_DISABLED=true "$(binary kubelet)" \
    --config "$DIR/kubelet/config.yaml" --kubeconfig "$DIR/node.kubeconfig" --root-dir /var/lib/kubelet \
    --container-runtime remote --container-runtime-endpoint "unix://$sock" \
    --pod-infra-container-image "$PAUSE_IMAGE" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --register-node=true
  start_recorded kube-proxy "$(binary kube-proxy)" --kubeconfig "$DIR/node.kubeconfig" --proxy-mode iptables \
    --hostname-override "$NODE_NAME" --cluster-cidr 10.244.0.0/16 --conntrack-max-per-core 0 \
    --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256 --bind-address "$NODE_IP"

  # Cluster DNS: dnsmasq answers from hosts files that dns-sync.py keeps in step with Services;
  # it knows nothing outside cluster.local and forwards nothing.
  start_recorded dnsmasq dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
    --listen-address="$NODE_IP" --except-interface=lo --hostsdir="$DIR/dns/hosts.d" --local=/cluster.local/ \
    --domain-needed --bogus-priv --no-poll --user=root --pid-file="$DIR/dns/dnsmasq.pid" --log-facility=-
  start_recorded dns-sync "$python" "$HERE/dns_sync.py" "$DIR/kubeconfig" "$DIR/dns/hosts.d/services"

  export KUBECONFIG="$DIR/kubeconfig"
  local kubectl; kubectl=$(kubectl_binary)
  until "$kubectl" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null \
        | grep -q True; do
    for name in containerd kubelet kube-proxy scheduler controller-manager dnsmasq dns-sync; do
      kill -0 "$(cat "$DIR/$name.pid")" 2>/dev/null || { tail -20 "$DIR/logs/$name.log" >&2; log "$name exited"; false; }
    done
    [ $((SECONDS - started)) -lt 180 ] || { log "node not Ready after 180 s"; false; }
    sleep 0.5
  done
  # The node advertises GPUs (it has none; pods asking for them run on the CPU).
  curl -skf -X PATCH -H "Content-Type: application/json-patch+json" \
    -H "Authorization: Bearer $(cat "$DIR/admin.token")" "https://$NODE_IP:6443/api/v1/nodes/$NODE_NAME/status" \
    -d '[{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "4"}]' >/dev/null
  trap - EXIT
  log "node Ready in $((SECONDS - started)) s; KUBECONFIG=$DIR/kubeconfig"
}

# The machine's kubectl may be any version; the client of the cluster's own version is extracted
# from Debian's kubernetes-client package into the cache.
kubectl_binary() {
  local cached="$CACHE_ROOT/kubernetes-client/usr/bin/kubectl"
  if [ ! -x "$cached" ]; then
    local work; work=$(mktemp -d); chmod 755 "$work"
    (cd "$work" && apt-get download kubernetes-client >/dev/null 2>&1)
    dpkg-deb -x "$work"/kubernetes-client_*.deb "$CACHE_ROOT/kubernetes-client"
    rm -rf "$work"
  fi
  echo "$cached"
}

import() {
  DIR=$(cd "$1" && pwd -P); shift
  local archive
  for archive in "$@"; do
    ctr --address "$DIR/containerd/containerd.sock" -n k8s.io images import --no-unpack=false "$archive" >/dev/null
  done
}

stop_pid() {
  local name=$1 pid
  [ -f "$DIR/$name.pid" ] || return 0
  pid=$(cat "$DIR/$name.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$DIR/$name.pid"
}

stop() {
  DIR=$(cd "$1" && pwd -P)  # the path start recorded (shims name their socket by it), not a symlink's
  trap - EXIT
  set +e
  stop_pid dns-sync; stop_pid dnsmasq
  stop_pid kubelet
  # The pods' containers: containerd-shim processes outlive containerd, so stop them first.
  local sock="$DIR/containerd/containerd.sock"
  if [ -S "$sock" ] && [ -f "$DIR/containerd.pid" ]; then
    local task
    for task in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks kill -s SIGKILL "$task" >/dev/null 2>&1
    done
    sleep 1
    for task in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks delete -f "$task" >/dev/null 2>&1
    done
  fi
  local shim
  for shim in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null); do kill -9 "$shim" 2>/dev/null; done
  stop_pid containerd
  stop_pid kube-proxy
  [ -n "$(binary kube-proxy)" ] && "$(binary kube-proxy)" --cleanup >/dev/null 2>&1  # removes its iptables chains
  stop_pid controller-manager; stop_pid scheduler
  bash "$HERE/kube-apiserver.sh" stop "$DIR"
  # The namespace's mounts (and the pods' volume mounts in it) vanish with its last process.
  stop_pid namespace
  local group  # the kubelet's empty QoS cgroups
  for group in /sys/fs/cgroup/*/kubepods; do
    [ -d "$group" ] && find "$group" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  rmdir /run/containerd /run/netns 2>/dev/null
  unguard_network
  remove_kube_chains
  local veth  # the pods' ends, should their namespaces outlive the processes for a moment
  for veth in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$veth" 2>/dev/null
  done
  ip link del "$BRIDGE" 2>/dev/null
  ip link del "$NODE_LINK" 2>/dev/null
  restore_sysctls "$DIR"
  set -e
}

case "${1:-}" in
  build) build ;;
  start) start "${2:?DIR}" ;;
  import) import "${2:?DIR}" "${@:3}" ;;
  stop) stop "${2:?DIR}" ;;
  kubectl) kubectl_binary ;;
  python) python_with_kubernetes ;;
  *) echo "usage: $0 build | start DIR | import DIR OCI_ARCHIVE... | stop DIR | kubectl | python" >&2; exit 2 ;;
esac

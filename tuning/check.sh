#!/usr/bin/env bash
# corecast preflight: is this box (and this shell) able to hold N WebSocket connections?
#
#   bash tuning/check.sh [--conns N] [--port P] [--client-ips K] [--json]
#
# Read-only and unprivileged: it only reads /proc, /sys and the shell's own limits. Every limit
# that is too low for N connections (default 2,000,000) is reported as LOW (or HIGH for a ceiling
# that is exceeded); the exit status is 1 if any row is LOW or HIGH, 0 otherwise, 2 on bad usage.
# WARN rows are advice and do not fail the check.
#
# This file is also the one place the sizing rules live: tuning/apply.sh sources it and uses the
# same cc_plan/cc_sysctl_table/cc_eval functions, so what check calls LOW is what apply raises.

# ---------------------------------------------------------------------------------------------
# Sizing. Every number below is derived from N; the comments in tuning/sysctl.conf show the
# values for N = 2,000,000 and explain each rule.
# ---------------------------------------------------------------------------------------------

# Kernel memory per idle TCP socket (measured 3.6-3.8 KB on the target machines) and the
# user-space budget per idle connection (DESIGN.md: <= 2 KB). Override to re-plan after measuring.
CC_KERNEL_BYTES=${CORECAST_KERNEL_BYTES_PER_CONN:-3700}
CC_USER_BYTES=${CORECAST_USER_BYTES_PER_CONN:-2048}
# Safety margin on the memory estimate: allocator slack, page tables, bursts of queued frames.
CC_MEM_MARGIN_PCT=15
# glommio: an executor refuses to start below 512 KiB of RLIMIT_MEMLOCK; with enough it pins
# 3 rings x 10 MiB of registered buffers per core (plus the rings).
CC_MEMLOCK_MIN_KIB=512
CC_MEMLOCK_PER_CORE_KIB=$((31 * 1024))
# Where sysctls are read and written. Only tests point this elsewhere.
CC_SYSCTL_ROOT=${CORECAST_SYSCTL_ROOT:-/proc/sys}

# Round $1 up to a multiple of $2.
cc_round_up() { echo $(((($1) + ($2) - 1) / ($2) * ($2))); }
cc_max() { if (($1 >= $2)); then echo "$1"; else echo "$2"; fi; }
cc_min() { if (($1 <= $2)); then echo "$1"; else echo "$2"; fi; }
cc_clamp() { cc_min "$(cc_max "$1" "$2")" "$3"; }

# Parse a connection count: 2000000, 2_000_000, 2,000,000, 2M, 15k.
cc_parse_count() {
    local s=${1//[,_]/} mult=1
    case $s in
        *[kK]) mult=1000 s=${s%?} ;;
        *[mM]) mult=1000000 s=${s%?} ;;
    esac
    [[ $s =~ ^[0-9]+$ ]] && ((10#$s > 0)) || return 1
    echo $((10#$s * mult))
}

# cc_plan N: set the CC_* globals for N connections.
cc_plan() {
    local n=$1
    CC_CONNS=$n
    CC_PAGE=$(getconf PAGESIZE 2>/dev/null || echo 4096)
    # File descriptors: one per connection, 10% headroom for reconnect bursts and sockets still
    # closing, plus a fixed 1024 for listeners, io_uring rings, eventfds, stdio (measured: 15 on
    # 2 cores). CC_NEED_FDS is what a check requires; CC_SET_FDS is what we configure (rounded up
    # to a whole MiB of descriptors so the configured limits are round numbers).
    CC_NEED_FDS=$((n + n / 10 + 1024))
    CC_SET_FDS=$(cc_round_up "$CC_NEED_FDS" 1048576)
    # System-wide open files: room for a second process of the same size (a load generator on the
    # same box, or an old and a new server during a restart) and the rest of the system.
    CC_NEED_FILE_MAX=$((2 * CC_NEED_FDS))
    CC_SET_FILE_MAX=$(cc_round_up "$CC_NEED_FILE_MAX" 1048576)
    # Accept queue per listener: a reconnect storm of N clients after a restart lands here.
    # At least the config's default backlog (4096), at most 65535.
    CC_SOMAXCONN=$(cc_clamp $((n / 16)) 4096 65535)
    CC_SYN_BACKLOG=$(cc_clamp $((n / 16)) 1024 65535)
    # Per-CPU input packet queue (loopback traffic goes through it too).
    CC_NETDEV_BACKLOG=$(cc_clamp $((n / 100)) 1000 16384)
    # TCP buffer memory, in pages, for all sockets together: 512 B / 1 KiB / 1.5 KiB per
    # connection (min / pressure / max). One small broadcast frame queued on every socket at once
    # (~1.1 KB of skb each) stays under the hard limit.
    CC_TCP_MEM="$((n * 512 / CC_PAGE)) $((n * 1024 / CC_PAGE)) $((n * 1536 / CC_PAGE))"
    # Per-socket buffer floor and default: idle sockets hold no buffer, so the kernel defaults
    # fit; what must not happen is a raised floor (it is what the kernel still grants every
    # socket under memory pressure). Third value (per-socket max) is left alone.
    CC_TCP_RMEM="4096 131072 6291456"
    CC_TCP_WMEM="4096 16384 4194304"
    # Connection tracking, if the module is loaded and the port is not marked notrack.
    CC_CONNTRACK_MAX=$((n + n / 4))
    CC_CONNTRACK_BUCKETS=$((CC_CONNTRACK_MAX / 4))
    # Ephemeral ports: only outgoing connections use them (a load generator; a server does not).
    CC_PORT_RANGE="10000 65535"
    CC_FIN_TIMEOUT=15
    CC_TW_REUSE=1
    # Cores: thread-per-core; estimate one core per million mostly idle connections (heartbeats
    # every 30 s and a reconnect storm after a restart), never fewer than 2.
    CC_NEED_CPUS=$(cc_max 2 $(((n + 999999) / 1000000)))
    # Memory: N x (kernel + user) + margin, plus the process itself: 64 MiB and, per core, the
    # 10 MiB glommio io_memory buffer and rings (16 MiB).
    CC_CPUS=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)
    CC_PER_CONN_BYTES=$((CC_KERNEL_BYTES + CC_USER_BYTES))
    CC_FIXED_BYTES=$(((64 << 20) + CC_CPUS * (16 << 20)))
    CC_NEED_MEM_BYTES=$((n * CC_PER_CONN_BYTES * (100 + CC_MEM_MARGIN_PCT) / 100 + CC_FIXED_BYTES))
}

# The sysctls, one per line: key|kind|wanted|severity|what it is for.
#   kind: floor (>= wanted), floor3 (each of 3 values >=), cap2 (first two of 3 values <=),
#         ceil (<= wanted), range (lo <= wanted lo and hi >= wanted hi), twreuse, iouring
#   severity: fail (LOW/HIGH fails the check) or warn (advice only)
cc_sysctl_table() {
    cat <<EOF
fs.nr_open|floor|$CC_SET_FDS|fail|per-process fd ceiling; caps ulimit -n / LimitNOFILE
fs.file-max|floor|$CC_SET_FILE_MAX|fail|open files, whole system
net.core.somaxconn|floor|$CC_SOMAXCONN|fail|caps each listener's accept backlog
net.ipv4.tcp_max_syn_backlog|floor|$CC_SYN_BACKLOG|fail|half-open connections per listener
net.core.netdev_max_backlog|floor|$CC_NETDEV_BACKLOG|fail|per-CPU input packet queue
net.ipv4.tcp_mem|floor3|$CC_TCP_MEM|fail|TCP buffer pages, all sockets (min pressure max)
net.ipv4.tcp_rmem|cap2|$CC_TCP_RMEM|warn|per-socket receive buffer (floor default max)
net.ipv4.tcp_wmem|cap2|$CC_TCP_WMEM|warn|per-socket send buffer (floor default max)
net.netfilter.nf_conntrack_max|floor|$CC_CONNTRACK_MAX|fail|conntrack entries (if tracked)
net.netfilter.nf_conntrack_buckets|floor|$CC_CONNTRACK_BUCKETS|warn|conntrack hash size
net.ipv4.ip_local_port_range|range|$CC_PORT_RANGE|warn|ephemeral ports (outgoing only)
net.ipv4.tcp_tw_reuse|twreuse|$CC_TW_REUSE|warn|reuse TIME_WAIT ports for connect()
net.ipv4.tcp_fin_timeout|ceil|$CC_FIN_TIMEOUT|warn|seconds an orphan waits in FIN_WAIT_2
kernel.io_uring_disabled|iouring|0|fail|io_uring allowed at all (glommio needs it)
EOF
}

# cc_sysctl_get KEY: print the value with whitespace collapsed; status 1 if the key is absent.
cc_sysctl_get() {
    local path="$CC_SYSCTL_ROOT/${1//.//}" v
    [[ -r $path ]] || return 1
    read -r -a v <"$path" || [[ ${#v[@]} -gt 0 ]] || return 1
    echo "${v[*]}"
}

# cc_eval KIND CURRENT WANTED: print "STATUS EFFECTIVE..." where STATUS is ok, low or high and
# EFFECTIVE is the value to end up with: the wanted value where the current one is not good
# enough, the current one where it already is (nothing is ever moved in the wrong direction).
cc_eval() {
    local kind=$1 cur wanted i st=ok
    read -r -a cur <<<"$2"
    read -r -a wanted <<<"$3"
    local -a eff=("${cur[@]}")
    case $kind in
        floor)
            if ((cur[0] < wanted[0])); then st=low eff=("${wanted[0]}"); fi
            ;;
        ceil)
            if ((cur[0] > wanted[0])); then st=high eff=("${wanted[0]}"); fi
            ;;
        floor3)
            for i in 0 1 2; do
                if ((cur[i] < wanted[i])); then st=low eff[i]=${wanted[i]}; fi
            done
            ;;
        cap2)
            for i in 0 1; do
                if ((cur[i] > wanted[i])); then st=high eff[i]=${wanted[i]}; fi
            done
            ;;
        range)
            if ((cur[0] > wanted[0])); then st=low eff[0]=${wanted[0]}; fi
            if ((cur[1] < wanted[1])); then st=low eff[1]=${wanted[1]}; fi
            ;;
        twreuse)
            # 0 = off, 2 = loopback only (kernel default), 1 = everywhere.
            if ((cur[0] != 1)); then st=low eff=(1); fi
            ;;
        iouring)
            # 0 = anyone, 1 = only CAP_SYS_ADMIN or members of kernel.io_uring_group, 2 = nobody.
            local group
            group=$(cc_sysctl_get kernel.io_uring_group 2>/dev/null || echo -1)
            if ((cur[0] == 2 || (cur[0] == 1 && group == -1))); then st=high eff=(0); fi
            ;;
    esac
    echo "$st ${eff[*]}"
}

# ---------------------------------------------------------------------------------------------
# The preflight itself.
# ---------------------------------------------------------------------------------------------

CC_ROWS_NAME=() CC_ROWS_STATUS=() CC_ROWS_CUR=() CC_ROWS_NEED=() CC_ROWS_NOTE=()

cc_row() {
    CC_ROWS_NAME+=("$1") CC_ROWS_STATUS+=("$2") CC_ROWS_CUR+=("$3") CC_ROWS_NEED+=("$4")
    CC_ROWS_NOTE+=("$5")
}

# Human-readable bytes (GiB with one decimal).
cc_gib() { awk -v b="$1" 'BEGIN { printf "%.1f GiB", b / 1073741824 }'; }

# Limit values as the shell prints them; "unlimited" compares as the largest number.
cc_limit_num() { if [[ $1 == unlimited ]]; then echo 9223372036854775807; else echo "$1"; fi; }

cc_in_list() { # cc_in_list PORT "4000,8000-8010": is PORT in the comma/range list?
    local port=$1 item lo hi
    local -a items
    IFS=, read -r -a items <<<"$2"
    for item in "${items[@]}"; do
        [[ -n $item ]] || continue
        lo=${item%-*} hi=${item#*-}
        if ((port >= lo && port <= hi)); then return 0; fi
    done
    return 1
}

cc_notrack_rule_seen() {
    # Only root can list firewall rules; unprivileged, we cannot tell.
    ((EUID == 0)) || return 1
    local rules=""
    if command -v nft >/dev/null 2>&1; then
        rules+=$(nft list ruleset 2>/dev/null || true)
    fi
    if command -v iptables-save >/dev/null 2>&1; then
        rules+=$(iptables-save -t raw 2>/dev/null || true)
    fi
    [[ $rules == *notrack* || $rules == *NOTRACK* ]]
}

cc_collect() {
    local port=$1 client_ips=$2
    local key kind wanted sev why cur res st

    # CPUs this process may run on (corecast starts one executor per allowed CPU by default).
    local cpus=$CC_CPUS
    if ((cpus >= CC_NEED_CPUS)); then st=OK; else st=LOW; fi
    cc_row "CPUs (allowed)" "$st" "$cpus" ">= $CC_NEED_CPUS" "estimate: 1 core per 1 M idle connections"

    # Memory.
    local avail_kib total_kib need_b
    avail_kib=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
    total_kib=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
    need_b=$CC_NEED_MEM_BYTES
    if ((avail_kib * 1024 >= need_b)); then st=OK; else st=LOW; fi
    cc_row "MemAvailable" "$st" "$(cc_gib $((avail_kib * 1024)))" ">= $(cc_gib "$need_b")" \
        "N x ($CC_KERNEL_BYTES B kernel + $CC_USER_BYTES B user) + ${CC_MEM_MARGIN_PCT}% + $((CC_FIXED_BYTES >> 20)) MiB"

    # TCP buffer ceiling must still fit next to the sockets themselves, or a broadcast storm
    # runs the box out of memory before TCP memory pressure starts.
    local tcp_mem_max fixed_b
    if cur=$(cc_sysctl_get net.ipv4.tcp_mem); then
        tcp_mem_max=$(awk '{ print $3 }' <<<"$cur")
        local want_max
        want_max=$(awk '{ print $3 }' <<<"$CC_TCP_MEM")
        tcp_mem_max=$(cc_max "$tcp_mem_max" "$want_max")
        fixed_b=$((CC_CONNS * CC_PER_CONN_BYTES))
        if ((tcp_mem_max * CC_PAGE + fixed_b <= total_kib * 1024)); then st=OK; else st=HIGH; fi
        cc_row "MemTotal vs tcp_mem max" "$st" "$(cc_gib $((total_kib * 1024)))" \
            ">= $(cc_gib $((tcp_mem_max * CC_PAGE + fixed_b)))" \
            "sockets + tcp_mem max ($tcp_mem_max pages after apply) must fit in RAM"
    fi

    # This shell's descriptor limits (a systemd service gets LimitNOFILE from its unit instead).
    local soft hard nr_open
    soft=$(ulimit -Sn) hard=$(ulimit -Hn)
    if (($(cc_limit_num "$soft") >= CC_NEED_FDS)); then st=OK; else st=LOW; fi
    cc_row "ulimit -n (soft)" "$st" "$soft" ">= $CC_NEED_FDS" "N + 10% + 1024; this shell"
    if (($(cc_limit_num "$hard") >= CC_NEED_FDS)); then st=OK; else st=LOW; fi
    cc_row "ulimit -Hn (hard)" "$st" "$hard" ">= $CC_NEED_FDS" "soft can only be raised up to it"

    # An installed unit's LimitNOFILE (the last assignment wins, drop-ins after the unit).
    local unit="${CORECAST_ETC_ROOT:-}/etc/systemd/system/corecast.service" unit_nofile=""
    if [[ -r $unit ]]; then
        local f
        local -a files=()
        for f in "$unit" "$unit".d/*.conf; do [[ -f $f ]] && files+=("$f"); done
        unit_nofile=$(awk -F= '/^[[:space:]]*LimitNOFILE=/ { v = $2 } END { print v }' "${files[@]}")
        unit_nofile=${unit_nofile%%:*}
        nr_open=$(cc_sysctl_get fs.nr_open || echo 0)
        if [[ -z $unit_nofile ]]; then
            st=LOW unit_nofile="unset (systemd default, 524288 at most)"
        elif [[ $unit_nofile == infinity ]]; then
            st=WARN unit_nofile="infinity (see: systemctl show corecast -p LimitNOFILE)"
        elif ((unit_nofile < CC_NEED_FDS)); then
            st=LOW
        elif ((unit_nofile > nr_open)); then
            st=LOW
            unit_nofile="$unit_nofile (> fs.nr_open $nr_open: unit will not start)"
        else
            st=OK
        fi
        cc_row "unit LimitNOFILE" "$st" "$unit_nofile" ">= $CC_NEED_FDS" "$unit"
    fi

    # Locked memory: glommio needs 512 KiB to start an executor at all; below that corecast
    # exits without serving. With cores x ~31 MiB it can also register its I/O buffers.
    local memlock memlock_need
    memlock=$(ulimit -l)
    memlock_need=$((cpus * CC_MEMLOCK_PER_CORE_KIB))
    local memlock_note="io_uring: < $CC_MEMLOCK_MIN_KIB won't start; < need: buffers unregistered"
    if (($(cc_limit_num "$memlock") < CC_MEMLOCK_MIN_KIB)); then
        st=LOW
    elif (($(cc_limit_num "$memlock") >= memlock_need)); then
        st=OK
    elif ((EUID == 0)); then
        st=OK memlock_note="root: CAP_IPC_LOCK lifts the limit (the service user needs it)"
    else
        st=WARN
    fi
    cc_row "ulimit -l (memlock KiB)" "$st" "$memlock" ">= $memlock_need" "$memlock_note"

    # The sysctls.
    local conntrack_tracked=1
    if [[ -r $CC_SYSCTL_ROOT/net/netfilter/nf_conntrack_max ]] && cc_notrack_rule_seen; then
        conntrack_tracked=0
    fi
    while IFS='|' read -r key kind wanted sev why; do
        if ! cur=$(cc_sysctl_get "$key"); then
            case $key in
                net.netfilter.*) cc_row "$key" OK "absent" "$wanted" "nf_conntrack not loaded" ;;
                kernel.io_uring_disabled) cc_row "$key" OK "absent" "$wanted" "kernel < 6.6: always on" ;;
                *) cc_row "$key" LOW "absent" "$wanted" "cannot read $CC_SYSCTL_ROOT" ;;
            esac
            continue
        fi
        res=$(cc_eval "$kind" "$cur" "$wanted")
        st=${res%% *}
        case $st in ok) st=OK ;; low) st=LOW ;; high) st=HIGH ;; esac
        if [[ $sev == warn && $st != OK ]]; then st=WARN; fi
        local need=$wanted
        case $kind in
            floor) need=">= $wanted" ;;
            ceil) need="<= $wanted" ;;
            floor3) need=">= $wanted" ;;
            cap2) need="<= ${wanted% *}, any" ;;
            range) need="<= ${wanted% *} .. >= ${wanted#* }" ;;
            twreuse) need="1" ;;
            iouring) need="0" ;;
        esac
        case $key in
            net.netfilter.nf_conntrack_max)
                if ((conntrack_tracked == 0)); then
                    st=OK why="notrack rule found; entries not needed"
                else
                    why="$why; count now $(cc_sysctl_get net.netfilter.nf_conntrack_count || echo ?)"
                fi
                ;;
            net.ipv4.ip_local_port_range)
                local lo hi ports
                read -r lo hi <<<"$cur"
                ports=$((hi - lo + 1))
                if ((client_ips > 0)); then
                    # On a load generator: K source addresses x ports >= N (per server ip:port).
                    if ((client_ips * ports >= CC_CONNS)); then st=OK; else st=LOW; fi
                    need=">= $(((CC_CONNS + client_ips - 1) / client_ips)) ports"
                    why="load generator with $client_ips source addresses"
                else
                    st=INFO
                    why="server: unused; a client needs $(((CC_CONNS + ports - 1) / ports)) source IP(s)"
                fi
                if cc_in_list "$port" "$lo-$hi" &&
                    ! cc_in_list "$port" "$(cc_sysctl_get net.ipv4.ip_local_reserved_ports || true)"; then
                    [[ $st == OK || $st == INFO ]] && st=WARN
                    why="$why; port $port is ephemeral: add it to ip_local_reserved_ports"
                fi
                ;;
            kernel.io_uring_disabled)
                if ((${cur% *} == 1)) && [[ $st == OK ]]; then
                    st=WARN
                    why="only group $(cc_sysctl_get kernel.io_uring_group) may use io_uring:"
                    why+=" add corecast to it"
                fi
                ;;
        esac
        cc_row "$key" "$st" "$cur" "$need" "$why"
    done < <(cc_sysctl_table)

    if [[ -r $CC_SYSCTL_ROOT/net/netfilter/nf_conntrack_max ]] && ((conntrack_tracked == 1)); then
        cc_row "conntrack on port $port" WARN "tracked?" "notrack" \
            "nf_conntrack loaded: mark the port notrack (tuning/README.md) to save ~0.3 KB/conn"
    fi
    local cookies
    if cookies=$(cc_sysctl_get net.ipv4.tcp_syncookies) && ((cookies == 0)); then
        cc_row net.ipv4.tcp_syncookies WARN "$cookies" "1" "SYN floods/reconnect storms drop instead"
    fi
}

cc_json_str() { # JSON string literal of $1
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\t'/ }
    s=${s//$'\n'/ }
    printf '"%s"' "$s"
}

cc_main() {
    set -euo pipefail
    local conns=2000000 json=0 port=4000 client_ips=0
    while (($#)); do
        case $1 in
            --conns)
                conns=$(cc_parse_count "${2:-}") || {
                    echo "check.sh: --conns needs a positive count (e.g. 2000000, 2M)" >&2
                    exit 2
                }
                shift 2
                ;;
            --port)
                [[ ${2:-} =~ ^[0-9]+$ ]] || { echo "check.sh: --port needs a number" >&2; exit 2; }
                port=$2
                shift 2
                ;;
            --client-ips)
                [[ ${2:-} =~ ^[0-9]+$ ]] || { echo "check.sh: --client-ips needs a number" >&2; exit 2; }
                client_ips=$2
                shift 2
                ;;
            --json) json=1 && shift ;;
            -h | --help)
                cat <<'EOF'
usage: check.sh [--conns N] [--port P] [--client-ips K] [--json]

Preflight for corecast: reports every limit too low for N connections (default 2000000).
  --conns N        connections to plan for (2000000, 2_000_000, 2M, 15k)
  --port P         the server's port, for the conntrack and ephemeral-port advice (default 4000)
  --client-ips K   this box is a load generator with K source addresses: check the port range
  --json           one JSON object instead of the table
Exit status: 0 all OK (WARN/INFO are advice), 1 something LOW or HIGH, 2 usage error.
Read-only; needs no privileges.
EOF
                exit 0
                ;;
            *)
                echo "check.sh: unknown argument: $1 (try --help)" >&2
                exit 2
                ;;
        esac
    done

    cc_plan "$conns"
    cc_collect "$port" "$client_ips"

    local i bad=0
    for i in "${!CC_ROWS_NAME[@]}"; do
        case ${CC_ROWS_STATUS[i]} in LOW | HIGH) bad=$((bad + 1)) ;; esac
    done

    if ((json)); then
        printf '{"conns":%d,"ok":%s,"problems":%d,"checks":[' "$conns" \
            "$( ((bad == 0)) && echo true || echo false)" "$bad"
        for i in "${!CC_ROWS_NAME[@]}"; do
            ((i > 0)) && printf ','
            printf '{"name":%s,"status":%s,"current":%s,"needed":%s,"note":%s}' \
                "$(cc_json_str "${CC_ROWS_NAME[i]}")" "$(cc_json_str "${CC_ROWS_STATUS[i]}")" \
                "$(cc_json_str "${CC_ROWS_CUR[i]}")" "$(cc_json_str "${CC_ROWS_NEED[i]}")" \
                "$(cc_json_str "${CC_ROWS_NOTE[i]}")"
        done
        printf ']}\n'
    else
        printf 'corecast preflight for %s connections (%s, %s)\n\n' "$conns" \
            "$(uname -r)" "$( ((EUID == 0)) && echo root || echo "user $(id -un)")"
        printf '%-36s %-6s %-28s %-30s %s\n' CHECK STATUS CURRENT NEEDED NOTE
        for i in "${!CC_ROWS_NAME[@]}"; do
            printf '%-36s %-6s %-28s %-30s %s\n' "${CC_ROWS_NAME[i]}" "${CC_ROWS_STATUS[i]}" \
                "${CC_ROWS_CUR[i]}" "${CC_ROWS_NEED[i]}" "${CC_ROWS_NOTE[i]}"
        done
        echo
        if ((bad == 0)); then
            echo "ok: nothing too low for $conns connections"
        else
            echo "$bad limit(s) LOW/HIGH for $conns connections."
            echo "fix: sudo bash tuning/apply.sh --conns $conns (try --dry-run first). The ulimit rows"
            echo "     are this shell's: they change at the next login after apply (limits.d); the"
            echo "     service takes its own from tuning/corecast.service."
        fi
    fi
    ((bad == 0))
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    cc_main "$@"
fi

#!/usr/bin/env bash
# Apply corecast's kernel and resource-limit tuning for N connections (default 2,000,000).
#
#   sudo bash tuning/apply.sh [--dry-run] [--conns N]
#
# For every setting it prints `current -> wanted` and changes only what is not good enough:
# limits that are too low are raised, timeouts or per-socket floors that are too high are
# lowered, and a value that is already better than ours is kept as it is. Running it twice
# changes nothing the second time. Without --dry-run it also persists the result:
#   /etc/sysctl.d/90-corecast.conf          tuning/sysctl.conf with the values now in effect
#   /etc/security/limits.d/90-corecast.conf tuning/limits.conf with nofile sized for N
#   /etc/systemd/system/corecast.service.d/90-corecast-nofile.conf
#                                           only if an installed unit's LimitNOFILE is too low
# With --dry-run it changes nothing and needs no privileges.
# The sizing rules are shared with tuning/check.sh (sourced below).

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tuning/check.sh
source "$here/check.sh"

# Tests may point these at a scratch tree (CORECAST_SYSCTL_ROOT is read by check.sh).
etc_root=${CORECAST_ETC_ROOT:-}
sysctl_dest=$etc_root/etc/sysctl.d/90-corecast.conf
limits_dest=$etc_root/etc/security/limits.d/90-corecast.conf
unit_installed=$etc_root/etc/systemd/system/corecast.service
dropin_dest=$etc_root/etc/systemd/system/corecast.service.d/90-corecast-nofile.conf

usage() {
    cat <<'EOF'
usage: apply.sh [--dry-run] [--conns N]

Raise the kernel and resource limits corecast needs for N connections (default 2000000) and
persist them in /etc/sysctl.d and /etc/security/limits.d. Never lowers a limit that is already
higher. --dry-run prints what would change and changes nothing (no root needed).
Run tuning/check.sh afterwards to see what is still missing.
EOF
}

dry=0 conns=2000000
while (($#)); do
    case $1 in
        --dry-run) dry=1 && shift ;;
        --conns)
            conns=$(cc_parse_count "${2:-}") || {
                echo "apply.sh: --conns needs a positive count (e.g. 2000000, 2M)" >&2
                exit 2
            }
            shift 2
            ;;
        -h | --help) usage && exit 0 ;;
        *)
            echo "apply.sh: unknown argument: $1 (try --help)" >&2
            exit 2
            ;;
    esac
done

if ((!dry && EUID != 0)); then
    echo "apply.sh: must run as root to change kernel settings and write /etc." >&2
    echo "          run: sudo bash tuning/apply.sh --conns $conns" >&2
    echo "          or:  bash tuning/apply.sh --dry-run --conns $conns   (changes nothing)" >&2
    exit 1
fi

cc_plan "$conns"
changes=0 failures=0
verb() { if ((dry)); then echo "would $1"; else echo "$1"; fi; }

# Read the value of `corecast <type> nofile` from a limits file, 0 if absent.
limits_nofile() {
    [[ -r $1 ]] || { echo 0 && return; }
    awk -v t="$2" '$1 == "corecast" && ($2 == t || $2 == "-") && $3 == "nofile" { v = $4 }
        END { print (v == "" ? 0 : v) }' "$1"
}

# LimitNOFILE of a unit plus its drop-ins (last assignment wins), 0 if absent.
unit_nofile() {
    local v f
    local -a files=()
    for f in "$@"; do [[ -f $f ]] && files+=("$f"); done
    ((${#files[@]})) || { echo 0 && return; }
    v=$(awk -F= '/^[[:space:]]*LimitNOFILE=/ { v = $2 } END { print v }' "${files[@]}")
    v=${v%%:*}
    [[ $v =~ ^[0-9]+$ ]] && echo "$v" || echo 0
}

# Install $2 (a temp file) as $1 unless identical; prints what it did or would do.
install_file() {
    local dest=$1 tmp=$2 what=$3
    if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
        echo "  $dest: unchanged"
        return
    fi
    if [[ -f $dest ]]; then
        echo "  $dest: $(verb update) ($what)"
        diff -u "$dest" "$tmp" | sed -n '3,$p' | grep -E '^[-+][^#]' | sed 's/^/      /' || true
    else
        echo "  $dest: $(verb install) ($what)"
    fi
    changes=$((changes + 1))
    if ((!dry)); then
        install -d -m 0755 "$(dirname "$dest")"
        install -m 0644 "$tmp" "$dest"
    fi
}

tmpdir=$(mktemp -d)
trap 'rm -rf "$tmpdir"' EXIT

echo "corecast tuning for $conns connections$( ((dry)) && echo ' (dry run: nothing is changed)')"

# --- descriptor limits first: fs.nr_open must cover every LimitNOFILE/nofile we configure -------

shipped_unit_nofile=$(unit_nofile "$here/corecast.service")
installed_unit_nofile=0
if [[ -f $unit_installed ]]; then
    installed_unit_nofile=$(unit_nofile "$unit_installed" "$unit_installed".d/*.conf)
fi
nofile_soft=$(cc_max "$CC_SET_FDS" "$(limits_nofile "$limits_dest" soft)")
nofile_hard=$(cc_max "$nofile_soft" "$(limits_nofile "$limits_dest" hard)")
unit_want=$(cc_max "$CC_SET_FDS" "$installed_unit_nofile")
nr_open_floor=$(cc_max "$nofile_hard" "$(cc_max "$unit_want" "$shipped_unit_nofile")")

# --- sysctls ---------------------------------------------------------------------------------

echo
echo "sysctl (current -> wanted):"
declare -A effective=()
while IFS='|' read -r key kind wanted _sev _why; do
    if [[ $key == fs.nr_open ]]; then
        wanted=$(cc_max "$wanted" "$nr_open_floor")
    fi
    if ! cur=$(cc_sysctl_get "$key"); then
        effective[$key]=$wanted
        printf '  %-36s %-26s    %-26s %s\n' "$key" "(absent)" "" \
            "skip: not in this kernel or module not loaded"
        continue
    fi
    res=$(cc_eval "$kind" "$cur" "$wanted")
    st=${res%% *} new=${res#* }
    effective[$key]=$new
    if [[ $st == ok ]]; then
        printf '  %-36s %-26s    %-26s %s\n' "$key" "$cur" "" "ok, keep"
        continue
    fi
    case $kind in
        twreuse | iouring) action="set" ;;
        range) action="widen" ;;
        *) if [[ $st == low ]]; then action="raise"; else action="lower"; fi ;;
    esac
    printf '  %-36s %-26s -> %-26s %s\n' "$key" "$cur" "$new" "$(verb "$action")"
    changes=$((changes + 1))
    if ((!dry)); then
        path="$CC_SYSCTL_ROOT/${key//.//}"
        if ! { printf '%s\n' "$new" >"$path"; } 2>/dev/null; then
            echo "    FAILED: cannot write $path (read-only /proc/sys, e.g. in a container?)" >&2
            failures=$((failures + 1))
        elif [[ $(cc_sysctl_get "$key") != "$new" ]]; then
            echo "    FAILED: $key reads back as '$(cc_sysctl_get "$key")'" >&2
            failures=$((failures + 1))
        fi
    fi
done < <(cc_sysctl_table)

# The persisted file: tuning/sysctl.conf with each value replaced by the one now in effect.
for key in "${!effective[@]}"; do
    printf '%s\t%s\n' "$key" "${effective[$key]}"
done >"$tmpdir/values"
{
    echo "# Installed by corecast tuning/apply.sh --conns $conns from tuning/sysctl.conf."
    echo "# Each value is the kernel's at install time where that was already good enough for"
    echo "# corecast, and corecast's need where it was not."
    awk -F'\t' 'NR == FNR { v[$1] = $2; next }
        /^-?[a-z][a-z0-9_.-]* *= / {
            key = $0; sub(/ *=.*/, "", key); bare = key; sub(/^-/, "", bare)
            if (bare in v) { print key " = " v[bare]; next }
        }
        { print }' "$tmpdir/values" "$here/sysctl.conf"
} >"$tmpdir/sysctl.conf"
echo
echo "persist sysctl:"
install_file "$sysctl_dest" "$tmpdir/sysctl.conf" "applied at boot by systemd-sysctl / procps"

# --- pam limits ------------------------------------------------------------------------------

echo
echo "limits for user corecast (current -> wanted):"
for t in soft hard; do
    have=$(limits_nofile "$limits_dest" "$t")
    want=$nofile_soft
    [[ $t == hard ]] && want=$nofile_hard
    if ((have >= want)); then
        printf '  %-36s %-26s    %-26s %s\n' "nofile ($t)" "$have" "" "ok, keep"
    else
        printf '  %-36s %-26s -> %-26s %s\n' "nofile ($t)" "${have/#0/unset}" "$want" \
            "$(verb raise)"
    fi
done
printf '  %-36s %-26s    %-26s %s\n' "memlock" "" "unlimited" "(io_uring registered buffers)"
awk -v soft="$nofile_soft" -v hard="$nofile_hard" '
    /^#?[^[:space:]]+[[:space:]]+(soft|hard|-)[[:space:]]+nofile[[:space:]]/ {
        val = ($2 == "hard") ? hard : soft
        sub(/[0-9]+[[:space:]]*$/, val)
    }
    { print }' "$here/limits.conf" >"$tmpdir/limits.conf"
echo
echo "persist limits:"
install_file "$limits_dest" "$tmpdir/limits.conf" "pam_limits, at the next login"
echo "  (this shell: ulimit -n $(ulimit -n), ulimit -l $(ulimit -l); a systemd service takes its"
echo "   limits from the unit, not from limits.d)"

# --- the systemd unit's own limit ---------------------------------------------------------------

echo
echo "systemd unit:"
if [[ -f $unit_installed ]]; then
    if ((installed_unit_nofile >= CC_SET_FDS)); then
        echo "  LimitNOFILE=$installed_unit_nofile: ok, keep"
    else
        echo "  LimitNOFILE: $installed_unit_nofile -> $CC_SET_FDS"
        printf '[Service]\n# Written by corecast tuning/apply.sh --conns %s\nLimitNOFILE=%s\n' \
            "$conns" "$CC_SET_FDS" >"$tmpdir/dropin.conf"
        install_file "$dropin_dest" "$tmpdir/dropin.conf" "raises the unit's LimitNOFILE"
        if ((!dry)) && [[ -z $etc_root && -d /run/systemd/system ]]; then
            systemctl daemon-reload
        fi
    fi
else
    echo "  not installed yet (scripts/install.sh); the shipped unit has LimitNOFILE=$shipped_unit_nofile"
    if ((shipped_unit_nofile < CC_SET_FDS)); then
        echo "  that is below $CC_SET_FDS: run apply.sh again after installing to add a drop-in"
    fi
fi

# --- summary ---------------------------------------------------------------------------------

echo
if ((dry)); then
    echo "dry run: $changes change(s) would be made; nothing was changed."
elif ((failures)); then
    echo "apply.sh: $changes change(s) attempted, $failures FAILED (see above)." >&2
    exit 1
elif ((changes)); then
    echo "apply.sh: $changes change(s) made. Check: bash tuning/check.sh --conns $conns"
else
    echo "apply.sh: nothing to change."
fi
if [[ -n ${effective[net.netfilter.nf_conntrack_max]:-} ]] &&
    [[ -r $CC_SYSCTL_ROOT/net/netfilter/nf_conntrack_max ]]; then
    echo "note: nf_conntrack is loaded; consider not tracking the corecast port (tuning/README.md)."
fi

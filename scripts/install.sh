#!/usr/bin/env bash
# Install corecast as a systemd service.
#
#   sudo bash scripts/install.sh [--prefix /usr/local] [--dry-run]
#
#   PREFIX/bin/corecast                  from target/release/corecast (build it first)
#   /etc/corecast/corecast.toml          from tuning/corecast.toml, only if absent (never
#                                        overwrites your config), root:corecast 0640
#   /etc/systemd/system/corecast.service from tuning/corecast.service (ExecStart follows PREFIX)
#   system user and group `corecast`     created if missing
#   systemctl daemon-reload              when systemd is running
#
# It does not enable or start the service and does not tune the kernel: run
# `sudo bash tuning/apply.sh` and then `sudo systemctl enable --now corecast`.
# --dry-run prints every action and changes nothing (no root needed). Running it again is safe:
# unchanged files are left alone. DESTDIR=/some/dir stages the files under that directory
# instead (for packaging); it then skips user creation and daemon-reload.

set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=/usr/local
dry=0
destdir=${DESTDIR:-}

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

while (($#)); do
    case $1 in
        --prefix)
            [[ ${2:-} == /* ]] || { echo "install.sh: --prefix needs an absolute path" >&2 && exit 2; }
            prefix=${2%/}
            shift 2
            ;;
        --prefix=*)
            prefix=${1#--prefix=}
            [[ $prefix == /* ]] || { echo "install.sh: --prefix needs an absolute path" >&2 && exit 2; }
            prefix=${prefix%/}
            shift
            ;;
        --dry-run) dry=1 && shift ;;
        -h | --help) usage && exit 0 ;;
        *)
            echo "install.sh: unknown argument: $1 (try --help)" >&2
            exit 2
            ;;
    esac
done

binary=$repo/target/release/corecast
bin_dest=$destdir$prefix/bin/corecast
conf_dir=$destdir/etc/corecast
conf_dest=$conf_dir/corecast.toml
unit_dest=$destdir/etc/systemd/system/corecast.service
staged=$([[ -n $destdir ]] && echo 1 || echo 0)

if ((!dry && !staged && EUID != 0)); then
    echo "install.sh: must run as root (writes $prefix/bin and /etc, creates the corecast user)." >&2
    echo "            run: sudo bash scripts/install.sh --prefix $prefix" >&2
    echo "            or:  bash scripts/install.sh --dry-run   (changes nothing)" >&2
    exit 1
fi

# Print a command, then run it unless this is a dry run.
run() {
    if ((dry)); then
        printf '  would run:'
    else
        printf '  run:'
    fi
    printf ' %q' "$@"
    printf '\n'
    ((dry)) || "$@"
}

step() { printf '%s\n' "$*"; }

tmpdir=$(mktemp -d)
trap 'rm -rf "$tmpdir"' EXIT

banner="corecast install (prefix $prefix"
[[ -z $destdir ]] || banner+=", DESTDIR $destdir"
((!dry)) || banner+=", dry run: nothing is changed"
step "$banner)"

# --- the binary must exist ------------------------------------------------------------------

if [[ ! -x $binary ]]; then
    if ((dry)); then
        step "note: $binary is missing; build it first (cargo build --release, or make build)"
    else
        echo "install.sh: $binary not found; build it first: cargo build --release" >&2
        exit 1
    fi
fi

# --- user and group --------------------------------------------------------------------------

step "user and group corecast:"
owner_args=()
if ((staged)); then
    step "  skipped (DESTDIR set: the package's own scripts create users)"
else
    if getent group corecast >/dev/null; then
        step "  group corecast exists"
    else
        run groupadd --system corecast
    fi
    if getent passwd corecast >/dev/null; then
        step "  user corecast exists"
    else
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        run useradd --system --gid corecast --no-create-home --home-dir /nonexistent \
            --shell "$nologin" --comment "corecast WebSocket server" corecast
    fi
    owner_args=(-o root -g corecast)
fi

# --- binary ----------------------------------------------------------------------------------

step "binary $bin_dest:"
if [[ -f $bin_dest && -f $binary ]] && cmp -s "$binary" "$bin_dest"; then
    step "  unchanged"
else
    run install -d -m 0755 "$(dirname "$bin_dest")"
    # Copy next to the target and rename over it: a running server keeps its old inode, and
    # nothing ever sees a half-written binary.
    run install -m 0755 "$binary" "$bin_dest.new"
    run mv -f "$bin_dest.new" "$bin_dest"
fi

# --- config ----------------------------------------------------------------------------------

step "config $conf_dest:"
if [[ -d $conf_dir ]]; then
    step "  directory exists"
else
    run install -d -m 0750 "${owner_args[@]}" "$conf_dir"
fi
if [[ -e $conf_dest ]]; then
    step "  exists: kept as it is (compare with: diff -u $conf_dest $repo/tuning/corecast.toml)"
else
    # 0640 root:corecast: it may hold auth_secret and api_key.
    run install -m 0640 "${owner_args[@]}" "$repo/tuning/corecast.toml" "$conf_dest"
fi

# --- systemd unit ----------------------------------------------------------------------------

step "unit $unit_dest:"
sed "s#/usr/local/bin/corecast#$prefix/bin/corecast#g" "$repo/tuning/corecast.service" \
    >"$tmpdir/corecast.service"
if [[ -f $unit_dest ]] && cmp -s "$tmpdir/corecast.service" "$unit_dest"; then
    step "  unchanged"
    unit_changed=0
else
    unit_src=$repo/tuning/corecast.service
    if ! cmp -s "$unit_src" "$tmpdir/corecast.service"; then
        step "  (ExecStart rewritten to $prefix/bin/corecast)"
        unit_src=$tmpdir/corecast.service
    fi
    run install -d -m 0755 "$(dirname "$unit_dest")"
    run install -m 0644 "$unit_src" "$unit_dest"
    unit_changed=1
fi

if ((staged)); then
    step "systemd: skipped (DESTDIR set)"
elif [[ -d /run/systemd/system ]]; then
    if ((unit_changed)); then
        run systemctl daemon-reload
    else
        step "systemd: unit unchanged, no reload needed"
    fi
else
    step "systemd: not running here; skipping daemon-reload"
fi

# --- next steps ------------------------------------------------------------------------------

if ((dry)); then
    step "dry run done: nothing was changed."
elif ((staged)); then
    step "staged under $destdir."
else
    step "installed."
fi
step "next:"
printf '  %-48s # %s\n' \
    "bash tuning/check.sh" "what is still too low for 2 M connections" \
    "sudo bash tuning/apply.sh" "raise it (try --dry-run first)" \
    "sudo systemctl enable --now corecast" "start now and at every boot" \
    "journalctl -u corecast -f" "logs"

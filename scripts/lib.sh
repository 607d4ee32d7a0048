# shellcheck shell=bash
# scripts/lib.sh: helpers shared by scripts/test, scripts/soak and scripts/valgrind.
#
# Source it after `cd`-ing to the repository root:
#
#     . scripts/lib.sh
#
# What it gives:
#   - the backend modes (`PERCID_MODES`, `mode_env`, `mode_desc`), so every script runs
#     the same five configurations the same way;
#   - a step runner (`run_step`, `skip_step`, `print_summary`) that prints a banner per
#     step, times it, keeps going after a failure and ends with the line
#     `N passed, N failed` that CI reads;
#   - tool detection and installation (`have`, `need_cargo`, `nightly_available`,
#     `apt_install`, `fuzz_targets`, `locked_args`, `have_hwloc_dev`);
#   - the dry-run switch: with PERCID_TEST_DRY=1 nothing is built, run or installed,
#     every step only prints what it would do. It is ignored when CI=true, so a CI run
#     can never pass without testing anything.
#
# Environment read here (all optional):
#   PERCID_TEST_DRY=1        print the steps, run nothing (ignored under CI=true)
#   PERCID_TEST_ONLY=REGEX   run only the steps whose id matches (bash ERE), e.g. 'fmt|clippy'
#   PERCID_TEST_SKIP=REGEX   skip the steps whose id matches
#   PERCID_STEP_TIMEOUT=SECS kill a step that runs longer (default 1200; 0 = no limit)
#   PERCID_TEST_DEADLINE=SECS the whole run's limit (default 3600 under CI=true, else none);
#                            steps left when it passes fail without running
#   PERCID_NO_INSTALL=1      never install anything (rustup, apt-get, cargo install)

# ---------------------------------------------------------------------------------
# Basics

# Cargo installed by rustup lives in ~/.cargo/bin, which a non-login shell may lack.
if ! command -v cargo >/dev/null 2>&1; then
    for _d in "${CARGO_HOME:-$HOME/.cargo}/bin" "$HOME/.cargo/bin"; do
        if [ -x "$_d/cargo" ]; then
            PATH="$_d:$PATH"
            export PATH
            break
        fi
    done
    unset _d
fi

# Debian's apt must never ask questions in CI.
export DEBIAN_FRONTEND=noninteractive
# Useful backtraces from any panicking test.
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
if [ "${CI:-}" = "true" ]; then
    # Incremental artefacts only cost disk and time on a one-shot machine.
    export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi

# The variables that pick a backend mode. Every script clears them first, so a mode is
# exactly what `mode_env` says and never what the caller's shell happened to export.
PERCID_MODE_VARS=(PERCID_BACKEND PERCID_INDEX GLIBC_TUNABLES)

clear_mode_env() {
    local v
    for v in "${PERCID_MODE_VARS[@]}"; do
        if [ -n "${!v+set}" ]; then
            echo "note: unsetting $v=${!v} from the environment (modes set it themselves)"
            unset "$v"
        fi
    done
}

log() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }

have() { command -v "$1" >/dev/null 2>&1; }

is_root() { [ "$(id -u)" = "0" ]; }

# Dry run: on when PERCID_TEST_DRY is set to anything but 0/empty, never under CI.
PERCID_DRY=0
if [ -n "${PERCID_TEST_DRY:-}" ] && [ "${PERCID_TEST_DRY}" != "0" ]; then
    if [ "${CI:-}" = "true" ]; then
        warn "PERCID_TEST_DRY is ignored when CI=true: running for real"
    else
        PERCID_DRY=1
    fi
fi
is_dry() { [ "$PERCID_DRY" = "1" ]; }

# Quote a command for display, the way a shell would read it back.
show_cmd() {
    local out="" a
    for a in "$@"; do
        out+="$(printf '%q' "$a") "
    done
    printf '%s\n' "${out% }"
}

# xrun_limited CMD...: like xrun, for a command inside a function step: it runs under the
# step's time limit (STEP_LIMIT, set by run_step) and is killed with its children then.
STEP_LIMIT=0
xrun_limited() {
    printf '+ %s\n' "$(show_cmd "$@")"
    if is_dry; then
        return 0
    fi
    run_limited "$STEP_LIMIT" "$@"
}

# xrun CMD...: print `+ CMD` and run it, or only print it in a dry run.
xrun() {
    printf '+ %s\n' "$(show_cmd "$@")"
    if is_dry; then
        return 0
    fi
    "$@"
}

# ---------------------------------------------------------------------------------
# Backend modes (see DESIGN.md section 1 and the crate docs)
#
#   default    glibc registers rseq; the crate uses glibc's area
#   norseq     GLIBC_TUNABLES=glibc.pthread.rseq=0: glibc does not register, the crate
#              registers rseq itself
#   portable   PERCID_BACKEND=portable: atomics only, no rseq
#   simulated  PERCID_BACKEND=simulated: the simulated rseq backend (aborts injected)
#   cpu_id     PERCID_INDEX=cpu_id: shards indexed by cpu_id, as on kernels before 6.3
# shellcheck disable=SC2034 # used by the scripts that source this file
PERCID_MODES=(default norseq portable simulated cpu_id)

# mode_env MODE: print the NAME=VALUE words of the mode, one per line (none for default).
mode_env() {
    case "$1" in
        default) ;;
        norseq) echo "GLIBC_TUNABLES=glibc.pthread.rseq=0" ;;
        portable) echo "PERCID_BACKEND=portable" ;;
        simulated) echo "PERCID_BACKEND=simulated" ;;
        cpu_id) echo "PERCID_INDEX=cpu_id" ;;
        *)
            echo "unknown mode: $1" >&2
            return 1
            ;;
    esac
}

mode_desc() {
    case "$1" in
        default) echo "glibc registers rseq, the crate uses glibc's area" ;;
        norseq) echo "glibc.pthread.rseq=0, the crate registers rseq itself" ;;
        portable) echo "portable backend (atomics only)" ;;
        simulated) echo "simulated rseq backend" ;;
        cpu_id) echo "shards indexed by cpu_id (pre-6.3 mode)" ;;
        *) echo "$1" ;;
    esac
}

# mode_env_array MODE: fill the global array MODE_ENV with the mode's assignments.
mode_env_array() {
    MODE_ENV=()
    local line
    while IFS= read -r line; do
        [ -n "$line" ] && MODE_ENV+=("$line")
    done < <(mode_env "$1")
}

# ---------------------------------------------------------------------------------
# Cargo and tools

# `--locked` only when Cargo.lock is committed (a library may leave it out).
LOCKED=()
if git ls-files --error-unmatch Cargo.lock >/dev/null 2>&1; then
    LOCKED=(--locked)
fi

need_cargo() {
    if ! have cargo; then
        echo "error: cargo not found on PATH (nor in ~/.cargo/bin)" >&2
        exit 2
    fi
}

# True when a nightly toolchain is installed (never installs one).
nightly_available() {
    have rustup || return 1
    rustup toolchain list 2>/dev/null | grep -q '^nightly' || return 1
    cargo +nightly --version >/dev/null 2>&1
}

# apt_install PKG...: apt-get install as root, with one `apt-get update` per script run.
APT_UPDATED=0
apt_install() {
    if ! is_root || ! have apt-get; then
        warn "cannot install $* (needs root and apt-get)"
        return 1
    fi
    if [ "$APT_UPDATED" = "0" ]; then
        xrun apt-get update -q || return 1
        APT_UPDATED=1
    fi
    xrun apt-get install -y -q --no-install-recommends "$@"
}

# no_install: true when the user forbade installing tools.
no_install() { [ -n "${PERCID_NO_INSTALL:-}" ] && [ "${PERCID_NO_INSTALL}" != "0" ]; }

# Fuzz targets of the cargo-fuzz crate in fuzz/ (file names in fuzz/fuzz_targets/),
# one per line; nothing when there is no fuzz crate or no target yet.
fuzz_targets() {
    [ -f fuzz/Cargo.toml ] || return 0
    local f
    for f in fuzz/fuzz_targets/*.rs; do
        [ -e "$f" ] || continue
        f="${f##*/}"
        echo "${f%.rs}"
    done
}

have_cargo_fuzz() { cargo fuzz --version >/dev/null 2>&1; }

# What the `numa` feature builds against: hwlocality's build script asks pkg-config for
# hwloc >= 2.8 (the feature `hwloc-2_8_0`) with static=true, which also links -ludev.
# shellcheck disable=SC2034 # used by the scripts that source this file
HWLOC_PACKAGES=(libhwloc-dev libudev-dev pkg-config)

# True when the `numa` feature can build here (never installs anything).
have_hwloc_dev() {
    have pkg-config || return 1
    pkg-config --exists 'hwloc >= 2.8.0' && pkg-config --exists libudev
}

# loom_tests PREEMPTIONS: the loom models, built with `--cfg loom` in their own target
# dir (target/loom: the flag would otherwise invalidate the normal build cache).
#   - tests/loom.rs, tests/loom_counter.rs, tests/loom_pool.rs, tests/loom_ring.rs
#     (when present): every test in them (the files are `#![cfg(loom)]`);
#   - the library's unit tests whose path contains `loom` (e.g. a `#[cfg(all(test, loom))]
#     mod loom_tests`); the other unit tests are filtered out, as they would run outside
#     `loom::model`.
# Other integration tests are not built under loom.
loom_tests() {
    local preemptions="$1" rc=0
    local envs=(env "RUSTFLAGS=${RUSTFLAGS:+$RUSTFLAGS }--cfg loom"
        "CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}/loom"
        "LOOM_MAX_PREEMPTIONS=$preemptions")
    if [ -f tests/loom.rs ] || [ -f tests/loom/main.rs ]; then
        xrun_limited "${envs[@]}" cargo test ${LOCKED[@]+"${LOCKED[@]}"} --release --test loom || rc=1
    fi
    if [ -f tests/loom_counter.rs ]; then
        xrun_limited "${envs[@]}" cargo test ${LOCKED[@]+"${LOCKED[@]}"} --release --test loom_counter || rc=1
    fi
    if [ -f tests/loom_pool.rs ]; then
        xrun_limited "${envs[@]}" cargo test ${LOCKED[@]+"${LOCKED[@]}"} --release --test loom_pool || rc=1
    fi
    if [ -f tests/loom_ring.rs ]; then
        xrun_limited "${envs[@]}" cargo test ${LOCKED[@]+"${LOCKED[@]}"} --release --test loom_ring || rc=1
    fi
    xrun_limited "${envs[@]}" cargo test ${LOCKED[@]+"${LOCKED[@]}"} --release --lib loom || rc=1
    return "$rc"
}

# First CPU this process may run on (for pinning).
first_allowed_cpu() {
    local list
    list="$(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status 2>/dev/null)"
    list="${list%%[-,]*}"
    echo "${list:-0}"
}

# ---------------------------------------------------------------------------------
# Machine line (DESIGN.md section 4: report it with every result)

print_machine() {
    local cpu glibc auxv
    cpu="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null)"
    glibc="$(ldd --version 2>/dev/null | head -n1)"
    # AT_RSEQ_FEATURE_SIZE (27 = 0x1b) and AT_RSEQ_ALIGN (28 = 0x1c); 0 or absent before 6.3.
    auxv="$(LD_SHOW_AUXV=1 /bin/true 2>/dev/null | awk '/0x1b\)|0x1c\)/ {printf "%s%s", sep, $0; sep="; "}')"
    log "machine: ${cpu:-unknown cpu}, $(nproc 2>/dev/null || echo '?') cpus, $(uname -srm)"
    log "libc:    ${glibc:-unknown}"
    log "auxv:    ${auxv:-no AT_RSEQ_* entries (kernel before 6.3?)}"
    log "rust:    $(rustc --version 2>/dev/null || echo 'rustc not found'); $(cargo --version 2>/dev/null || echo 'cargo not found')"
    if nightly_available; then
        log "nightly: $(rustc +nightly --version 2>/dev/null)"
    else
        log "nightly: not installed"
    fi
    log "lock:    $(if [ "${#LOCKED[@]}" -gt 0 ]; then echo 'Cargo.lock committed, using --locked'; else echo 'Cargo.lock not committed, no --locked'; fi)"
}

# ---------------------------------------------------------------------------------
# Step runner

STEP_IDS=()
STEP_RESULTS=()
STEP_SECS=()
STEP_NOTES=()
STEP_COUNT=0
STEPS_PASSED=0
STEPS_FAILED=0
STEPS_SKIPPED=0
STEPS_PLANNED=0
STEPS_T0=$SECONDS
# PERCID_TEST_DEADLINE: seconds for the whole run (0 = none). Under CI it defaults to
# 3600, well inside CI's own limit, so that a hung test still ends with a summary.
if [ "${CI:-}" = "true" ]; then
    PERCID_DEADLINE="${PERCID_TEST_DEADLINE:-3600}"
else
    PERCID_DEADLINE="${PERCID_TEST_DEADLINE:-0}"
fi

# The running step's `timeout` process, so that an interrupt can stop the whole step.
STEP_PID=""
on_interrupt() {
    if [ -n "$STEP_PID" ]; then
        # timeout forwards the signal to the step's whole process group.
        kill -TERM "$STEP_PID" 2>/dev/null
        wait "$STEP_PID" 2>/dev/null
    fi
    log ""
    log "interrupted"
    exit 130
}
trap on_interrupt INT TERM

# run_limited SECS CMD...: run an external command, killed with all its children after
# SECS seconds (0: no limit). Exit status 124 (or 137) when the limit struck.
#
# `timeout` puts the command in its own process group and, when the limit passes, kills
# all of it (cargo and the test binaries it started). That group does not get the
# terminal's Ctrl-C, so it runs in the background and the INT/TERM trap above passes the
# signal on.
run_limited() {
    local limit="$1" rc
    shift
    if [ "$limit" = "0" ] || ! have timeout; then
        "$@"
        return
    fi
    timeout -k 30 "$limit" "$@" &
    STEP_PID=$!
    wait "$STEP_PID"
    rc=$?
    STEP_PID=""
    return "$rc"
}

record_step() { # id result secs note
    STEP_IDS+=("$1")
    STEP_RESULTS+=("$2")
    STEP_SECS+=("$3")
    STEP_NOTES+=("$4")
    case "$2" in
        PASS) STEPS_PASSED=$((STEPS_PASSED + 1)) ;;
        FAIL) STEPS_FAILED=$((STEPS_FAILED + 1)) ;;
        SKIP) STEPS_SKIPPED=$((STEPS_SKIPPED + 1)) ;;
        PLAN) STEPS_PLANNED=$((STEPS_PLANNED + 1)) ;;
    esac
}

# step_selected ID: PERCID_TEST_ONLY / PERCID_TEST_SKIP filters.
step_selected() {
    local id="$1"
    if [ -n "${PERCID_TEST_ONLY:-}" ] && ! [[ "$id" =~ $PERCID_TEST_ONLY ]]; then
        return 1
    fi
    if [ -n "${PERCID_TEST_SKIP:-}" ] && [[ "$id" =~ $PERCID_TEST_SKIP ]]; then
        return 1
    fi
    return 0
}

banner() { # id description
    STEP_COUNT=$((STEP_COUNT + 1))
    log ""
    log "================================================================================"
    log "==> step $STEP_COUNT [$1] $2"
    log "================================================================================"
}

# run_step ID DESCRIPTION CMD [ARG...]
#
# Runs CMD as one step: banner, timing, PASS/FAIL record. An external command runs under
# `timeout` (PERCID_STEP_TIMEOUT, or STEP_TIMEOUT set for this one call) and is only
# printed in a dry run. A shell function is always called: it must use `xrun` for
# everything that has an effect, so that it honours the dry run itself.
# Always returns 0: a failed step is recorded, and the script goes on.
run_step() {
    local id="$1" desc="$2"
    shift 2
    if ! step_selected "$id"; then
        return 0
    fi
    banner "$id" "$desc"
    local is_fn=0
    if [ "$(type -t "$1")" = "function" ]; then
        is_fn=1
    fi
    if is_dry && [ "$is_fn" = "0" ]; then
        printf '+ %s\n' "$(show_cmd "$@")"
        record_step "$id" PLAN 0 "dry run"
        return 0
    fi
    local limit="${STEP_TIMEOUT:-${PERCID_STEP_TIMEOUT:-1200}}"
    local t0=$SECONDS rc
    # The whole run's deadline: a step never runs past it, and once it has passed the
    # remaining steps fail at once, so the summary is still printed in time.
    if [ "$PERCID_DEADLINE" != "0" ] && ! is_dry; then
        local left=$((PERCID_DEADLINE - (SECONDS - STEPS_T0)))
        if [ "$left" -le 0 ]; then
            log "<== [$id] FAIL: not run, the run's deadline (PERCID_TEST_DEADLINE=${PERCID_DEADLINE} s) has passed"
            record_step "$id" FAIL 0 "not run: deadline passed"
            return 0
        fi
        if [ "$limit" = "0" ] || [ "$left" -lt "$limit" ]; then
            limit="$left"
        fi
    fi
    # A function step runs its commands with `xrun_limited`, which reads this.
    STEP_LIMIT="$limit"
    if [ "$is_fn" = "1" ]; then
        "$@"
        rc=$?
    else
        printf '+ %s\n' "$(show_cmd "$@")"
        run_limited "$limit" "$@"
        rc=$?
    fi
    local secs=$((SECONDS - t0))
    if is_dry; then
        log "<== [$id] planned (dry run)"
        record_step "$id" PLAN "$secs" "dry run"
    elif [ "$rc" = "0" ]; then
        log "<== [$id] PASS in ${secs} s"
        record_step "$id" PASS "$secs" ""
    elif [ "$is_fn" = "0" ] && [ "$limit" != "0" ] && [ "$secs" -ge "$limit" ] &&
        { [ "$rc" = "124" ] || [ "$rc" = "137" ]; }; then
        log "<== [$id] FAIL: timed out after ${limit} s (PERCID_STEP_TIMEOUT / PERCID_TEST_DEADLINE)"
        record_step "$id" FAIL "$secs" "timed out after ${limit} s"
    else
        log "<== [$id] FAIL (exit $rc) in ${secs} s"
        record_step "$id" FAIL "$secs" "exit $rc"
    fi
    return 0
}

# skip_step ID REASON: record a step that cannot run here (not counted as passed or failed).
skip_step() {
    local id="$1" reason="$2"
    if ! step_selected "$id"; then
        return 0
    fi
    log ""
    log "--- skip [$id]: $reason"
    record_step "$id" SKIP 0 "$reason"
}

# fail_step ID REASON: record a step that failed before it could run.
fail_step() {
    local id="$1" reason="$2"
    if ! step_selected "$id"; then
        return 0
    fi
    log ""
    log "--- FAIL [$id]: $reason"
    record_step "$id" FAIL 0 "$reason"
}

# print_summary TITLE: the table of steps, then the last line `N passed, N failed`
# (alone on its line, exactly that form: CI reads it). Returns 1 when a step failed.
print_summary() {
    local title="$1" i total=$((SECONDS - STEPS_T0))
    log ""
    log "================================================================================"
    log "$title summary"
    log "================================================================================"
    for i in "${!STEP_IDS[@]}"; do
        printf '  %-4s  %-22s %6s s  %s\n' "${STEP_RESULTS[$i]}" "${STEP_IDS[$i]}" \
            "${STEP_SECS[$i]}" "${STEP_NOTES[$i]}"
    done
    log "total time: ${total} s; ${STEPS_SKIPPED} skipped"
    if is_dry; then
        log "dry run (PERCID_TEST_DRY): ${STEPS_PLANNED} steps planned, nothing was built or run"
    fi
    log "${STEPS_PASSED} passed, ${STEPS_FAILED} failed"
    [ "$STEPS_FAILED" = "0" ]
}

#!/usr/bin/env bash
# The one command a person runs: set up, build the kernel and its disk images, boot them.
#
#   ./run-qemu.sh              build, boot in QEMU (BIOS, 4 CPUs, 4 GiB by default), run the demonstration
#                              (its picture of physical memory: target/demo/physmap.png)
#   ./run-qemu.sh test         every test: host tests, then in-kernel tests in several QEMU configurations
#   ./run-qemu.sh bench        the benchmarks, one BENCH {json} line per figure
#   ./run-qemu.sh soak [--minutes N]   writers on every CPU but one against migrations,
#                              exchanges, promotions, splits and collapses (not part of test)
#   ./run-qemu.sh image --opts "mode=test"   images with kernel options baked in, for a real
#                              machine: target/images/baked/{bios,uefi}.img
#   options: --uefi  --smp N  --mem SIZE  --gdb  --seed N  --filter TEXT (tests whose name contains TEXT;
#            for bench, the groups of figures it names, e.g. vm.contig)
#
# Setup installs what is missing: Debian's qemu-system-x86 and ovmf (apt-get, through
# sudo when not root) and the pinned nightly with its components (rustup).
#
# `test` runs every step even when an earlier one fails, then prints a table of steps
# (passed, failed, skipped per step) and, as its last line, the totals `N passed,
# N failed` (`, N skipped` appended when any); it exits 0 only when everything passed.
# An in-kernel step fails unless the kernel exits cleanly after its summary line, that
# line counts at least one test and no test failed (qemu-run --tests). With
# --uefi/--smp/--mem the in-kernel tests run in that one configuration instead of the
# list below. Logs of each step: target/test-logs/.
#
# Environment: MMK_TEST_TIMEOUT   seconds per in-kernel test run (default 600)
#              MMK_ONE_TEST_TIMEOUT  seconds one in-kernel test may run (default 300; the
#                                 slowest takes about 40 s here under TCG)
#              MMK_HOST_TIMEOUT   seconds per host cargo test step (default 1200)
#              MMK_BOOT_TIMEOUT   seconds per boot in the boot tests (default 300)
#              MMK_IMAGES         where the disk images go (default target/images)
set -euo pipefail

# In-kernel test configurations for `./run-qemu.sh test`: firmware, CPUs, memory, then
# optional words: kernel options for that configuration only (skip=A,B leaves out the
# tests whose name contains A or B, filter=TEXT keeps only those, noskip=A,B makes a
# skip of a test whose name contains A or B a failure), and qemu=ARG for extra QEMU
# arguments (one word each).
#
# 1 GiB pages: BIOS and UEFI guests of 4 GiB have two free 1 GiB blocks after boot (2 GiB
# guests have none, 8 GiB ones six), so the 4 GiB lines run every 1 GiB test, BIOS and
# UEFI, with noskip= so that a lost 1 GiB block fails the step instead of skipping. They
# also forbid skips of the mem:: and smp:: tests, which need nothing more than 4 CPUs.
#
# QEMU's multi-threaded TCG runs each vCPU on its own host thread: real parallelism, which
# the stale-translation and migration tests need, but 4 vCPUs spinning on 2 host cores make
# the 100 000-shootdown stress take ~6 minutes. It runs once, on 4 CPUs, under
# single-threaded TCG (vCPUs interleaved on one thread), where it takes ~15 s. The
# 100 000-migration test (1 GiB pages need a 4 GiB+ guest) runs on 4 CPUs/4 GiB BIOS and
# 8 CPUs/2 GiB; a CPU model without 1 GiB pages checks the 2 MiB fallback of the
# physical map and of user faults (every other line gets 1 GiB pages from the runner's
# `-cpu qemu64,+pdpe1gb`; the 4 GiB lines, whose CPU has them, leave out the fallback
# test, which cannot check anything there); the last line is a 2-node NUMA guest from QEMU's -numa options.
#
# The contiguity scenario (vm::contig_scenario_*, 2-8 s a run under TCG) runs its four
# seeds (vm::contig_scenario_4g_*) on the 4 GiB BIOS and UEFI lines, where noskip= makes
# sure they really run; the 8 GiB and NUMA lines leave it out for time; the 2 GiB line
# runs its smaller-machine test (which skips at 256 MiB, below the scenario's sizes).
# Among them vm::contig_scenario_4g_4cpu_run_seed runs the run's random seed (repeat one
# with `--filter run_seed --seed N`), and vm::contig_scenario_4g_4cpu_huge_gigabyte_leaf
# checks the 1 GiB VMA's 1 GiB leaf after the huge-page steps.
#
# The tests of writers on 3 CPUs against migration, exchange, contiguity generation and
# promotion (vm::writers*, *_under_writers*, vm::huge_writers*; 8-40 s each) run on the
# 4 GiB BIOS and 8 CPU/2 GiB lines (the NUMA line all but vm::writers, the 100 000
# migrations); the UEFI and 8 GiB lines, which are there for their firmware and their
# size, leave them out for time (they depend on neither), and the 8 GiB line the
# promote/split races (vm::huge_race*) too.
KERNEL_TEST_CONFIGS=(
    "bios 4 4G skip=tlb::stress,mem::user_huge_faults noskip=mem::,smp::,_1g,vm::writers,vm::contig_scenario_4g"
    "bios 4 4G filter=tlb::stress qemu=-accel qemu=tcg,thread=single"
    "uefi 4 4G skip=tlb::stress,mem::user_huge_faults,vm::writers,_under_writers,huge_writers noskip=mem::,smp::,_1g,vm::contig_scenario_4g"
    "bios 1 256M"
    "bios 2 1G filter=tlb::"
    "uefi 2 1G filter=smp::"
    "bios 8 2G skip=tlb::stress"
    "uefi 8 2G filter=smp::"
    "bios 4 8G skip=tlb::stress,vm::writers,vm::contig_scenario,_under_writers,huge_writers,huge_race"
    "bios 2 4G filter=mem:: noskip=mem::user_huge_faults,mem::linear_map qemu=-cpu qemu=qemu64,-pdpe1gb"
    "bios 4 6G filter=vm:: skip=vm::writers,vm::contig_scenario qemu=-object qemu=memory-backend-ram,id=m0,size=3G qemu=-object qemu=memory-backend-ram,id=m1,size=3G qemu=-numa qemu=node,nodeid=0,cpus=0-1,memdev=m0 qemu=-numa qemu=node,nodeid=1,cpus=2-3,memdev=m1"
)
TEST_TIMEOUT=${MMK_TEST_TIMEOUT:-600}
ONE_TEST_TIMEOUT=${MMK_ONE_TEST_TIMEOUT:-300}
HOST_TIMEOUT=${MMK_HOST_TIMEOUT:-1200}

TOOLCHAIN=nightly-2026-10-30
COMPONENTS=(rust-src llvm-tools-preview rustfmt clippy)

cd "$(dirname "${BASH_SOURCE[0]}")"
REPO=$(pwd)
TARGET_DIR=$(realpath -m "${CARGO_TARGET_DIR:-$REPO/target}")
KERNEL_TARGET_DIR=$(realpath -m "${CARGO_TARGET_DIR:-$REPO/kernel/target}")
KERNEL_ELF=$KERNEL_TARGET_DIR/x86_64-target/release/kernel
# The kernel the images carry: the ELF above without its debug info (the bootloader
# reads the whole file, and under TCG a BIOS boot spent ~8 s of its ~10 s reading the
# 17 MB of debug info). Load addresses and symbols are the same, so a debugger uses
# the ELF above.
IMAGE_ELF=$KERNEL_ELF.stripped
IMAGES=$(realpath -m "${MMK_IMAGES:-$TARGET_DIR/images}")
QEMU_RUN=$TARGET_DIR/release/qemu-run
LOG_DIR=$TARGET_DIR/test-logs

usage() {
    cat <<'USAGE'
./run-qemu.sh              build, boot in QEMU (BIOS, 4 CPUs, 4 GiB by default), run the demonstration
./run-qemu.sh test         every test: host tests, then in-kernel tests in several QEMU configurations
./run-qemu.sh bench        the benchmarks, one BENCH {json} line per figure
./run-qemu.sh bench --quick   each figure once, short (the lines, not the timings)
./run-qemu.sh soak [--minutes N]   writers on every CPU but one against a mixed stream of
                           migrations, exchanges, promotions, splits and collapses at all
                           three sizes for N minutes (default 1): progress, then totals
./run-qemu.sh image --opts "OPTIONS"   images with the kernel options baked in (for a real
                           machine, no fw_cfg there): target/images/baked/{bios,uefi}.img
options: --uefi  --smp N  --mem SIZE  --gdb  --seed N  --filter TEXT (tests whose name contains TEXT;
         for bench, the groups of figures it names, e.g. vm.contig)
USAGE
}

die() {
    echo "run-qemu.sh: $*" >&2
    exit 2
}

note() {
    echo "==> $*" >&2
}

# ---------------------------------------------------------------- arguments

COMMAND=demo
UEFI=0
SMP=""
MEM=""
GDB=0
SEED=""
FILTER=""
QUICK=0
MINUTES=""
OPTS=""

need_value() {
    [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see ./run-qemu.sh --help)"
}

while [[ $# -gt 0 ]]; do
    case $1 in
        demo | test | bench | soak | image) COMMAND=$1 ;;
        --opts) need_value "$@"; OPTS=$2; shift ;;
        --opts=*) OPTS=${1#*=} ;;
        --uefi) UEFI=1 ;;
        --gdb) GDB=1 ;;
        --quick) QUICK=1 ;;
        --smp) need_value "$@"; SMP=$2; shift ;;
        --smp=*) SMP=${1#*=} ;;
        --mem) need_value "$@"; MEM=$2; shift ;;
        --mem=*) MEM=${1#*=} ;;
        --minutes) need_value "$@"; MINUTES=$2; shift ;;
        --minutes=*) MINUTES=${1#*=} ;;
        --seed) need_value "$@"; SEED=$2; shift ;;
        --seed=*) SEED=${1#*=} ;;
        --filter) need_value "$@"; FILTER=$2; shift ;;
        --filter=*) FILTER=${1#*=} ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
    shift
done

[[ -z $SMP || $SMP =~ ^[1-9][0-9]*$ ]] || die "--smp wants a number of CPUs, not '$SMP'"
[[ -z $MEM || $MEM =~ ^[1-9][0-9]*([MGT]|MiB|GiB|TiB)?$ ]] || die "--mem wants a size like 256M or 8G, not '$MEM'"
[[ -z $SEED || $SEED =~ ^[0-9]+$ ]] || die "--seed wants a number, not '$SEED'"
[[ -z $MINUTES || $MINUTES =~ ^[1-9][0-9]*$ ]] || die "--minutes wants a whole number from 1, not '$MINUTES'"
[[ -z $MINUTES || $COMMAND == soak ]] || die "--minutes is for the soak command"
[[ $FILTER =~ ^[^[:space:]]*$ ]] || die "--filter TEXT must not contain spaces"
[[ -z $OPTS || $COMMAND == image ]] || die "--opts is for the image command (other commands pass options through fw_cfg)"
[[ $COMMAND != image || -n $OPTS ]] || die "image wants --opts \"OPTIONS\" (e.g. --opts \"mode=test\")"
[[ $TEST_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "MMK_TEST_TIMEOUT wants seconds, not '$TEST_TIMEOUT'"
[[ $ONE_TEST_TIMEOUT =~ ^[1-9][0-9]*$ ]] ||
    die "MMK_ONE_TEST_TIMEOUT wants seconds, not '$ONE_TEST_TIMEOUT'"
[[ $HOST_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "MMK_HOST_TIMEOUT wants seconds, not '$HOST_TIMEOUT'"

# ---------------------------------------------------------------- setup

ovmf_present() {
    local pair
    for pair in /usr/share/OVMF/OVMF_CODE_4M.fd:/usr/share/OVMF/OVMF_VARS_4M.fd \
        /usr/share/OVMF/OVMF_CODE.fd:/usr/share/OVMF/OVMF_VARS.fd; do
        [[ -f ${pair%%:*} && -f ${pair##*:} ]] && return 0
    done
    [[ -n ${MMK_OVMF_CODE:-} && -f ${MMK_OVMF_CODE:-} && -f ${MMK_OVMF_VARS:-} ]]
}

setup_packages() {
    local packages=()
    command -v qemu-system-x86_64 >/dev/null || packages+=(qemu-system-x86)
    ovmf_present || packages+=(ovmf)
    [[ ${#packages[@]} -eq 0 ]] && return 0

    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "need root or sudo to install ${packages[*]}"
        # No terminal (CI): never wait for a password prompt.
        if [[ -t 0 ]]; then sudo=(sudo); else sudo=(sudo -n); fi
    fi
    command -v apt-get >/dev/null || die "please install QEMU (qemu-system-x86_64) and OVMF; no apt-get here"
    note "installing ${packages[*]} (apt-get)"
    "${sudo[@]}" apt-get update -qq >/dev/null
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
}

setup_rust() {
    if ! command -v rustup >/dev/null; then
        if [[ -x $HOME/.cargo/bin/rustup ]]; then
            export PATH=$HOME/.cargo/bin:$PATH
        else
            command -v curl >/dev/null || die "rustup is missing; install it from https://rustup.rs"
            note "installing rustup (https://rustup.rs)"
            curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
                sh -s -- -y -q --profile minimal --default-toolchain none >/dev/null
            export PATH=$HOME/.cargo/bin:$PATH
        fi
    fi
    local installed=""
    if rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
        installed=$(rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null || true)
    fi
    local component missing=0
    for component in "${COMPONENTS[@]}"; do
        # rustup lists llvm-tools-preview as llvm-tools-<host>.
        grep -q "^${component%-preview}" <<<"$installed" || missing=1
    done
    [[ $missing -eq 0 ]] && return 0
    note "installing the $TOOLCHAIN toolchain (rustup)"
    local components
    components=$(IFS=,; echo "${COMPONENTS[*]}")
    rustup toolchain install "$TOOLCHAIN" --profile minimal --component "$components" >/dev/null
}

# ---------------------------------------------------------------- build

build() {
    note "building the kernel"
    cargo kbuild
    note "building the image builder and the QEMU runner"
    # Separate calls: built together, cargo would unify their dependencies' features
    # differently from `cargo build -p boot` and rebuild the bootloader each time.
    cargo build --release -p boot
    cargo build --release -p boot-tests --bins
    if [[ ! $IMAGE_ELF -nt $KERNEL_ELF ]]; then
        local objcopy
        objcopy="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-objcopy"
        [[ -x $objcopy ]] || die "no llvm-objcopy at $objcopy (rustup component llvm-tools-preview)"
        "$objcopy" --strip-debug "$KERNEL_ELF" "$IMAGE_ELF.tmp.$$"
        mv -f "$IMAGE_ELF.tmp.$$" "$IMAGE_ELF"
    fi
    if [[ -f $IMAGES/bios.img && -f $IMAGES/uefi.img &&
        $IMAGES/bios.img -nt $IMAGE_ELF && $IMAGES/uefi.img -nt $IMAGE_ELF &&
        $IMAGES/bios.img -nt $TARGET_DIR/release/boot ]]; then
        return 0
    fi
    note "packing the BIOS and UEFI images into $IMAGES"
    # Build aside, then rename into place: a QEMU already running on the old image keeps
    # reading the old file.
    local staging=$IMAGES.tmp.$$
    mkdir -p "$IMAGES"
    "$TARGET_DIR/release/boot" "$IMAGE_ELF" "$staging" >/dev/null
    mv -f "$staging/bios.img" "$IMAGES/bios.img"
    mv -f "$staging/uefi.img" "$IMAGES/uefi.img"
    rmdir "$staging"
}

# Images with the kernel options in $OPTS baked in (the bootloader's ramdisk), for
# machines without fw_cfg.
image() {
    local out=$IMAGES/baked
    "$TARGET_DIR/release/boot" "$IMAGE_ELF" "$out" --opts "$OPTS" >/dev/null
    note "kernel options \"$OPTS\" baked into:"
    echo "$out/bios.img"
    echo "$out/uefi.img"
}

# ---------------------------------------------------------------- QEMU

# qemu-run arguments for the user's --uefi/--smp/--mem/--gdb.
user_qemu_args() {
    QEMU_ARGS=(--images "$IMAGES")
    [[ $UEFI -eq 1 ]] && QEMU_ARGS+=(--uefi)
    [[ -n $SMP ]] && QEMU_ARGS+=(--smp "$SMP")
    [[ -n $MEM ]] && QEMU_ARGS+=(--mem "$MEM")
    [[ $GDB -eq 1 ]] && QEMU_ARGS+=(--gdb)
    return 0
}

kernel_options() {
    local mode=$1 options="mode=$1"
    if [[ -n $SEED ]]; then options+=" seed=$SEED"; fi
    if [[ -n $FILTER && ( $mode == test || $mode == bench ) ]]; then options+=" filter=$FILTER"; fi
    if [[ $QUICK -eq 1 && $mode == bench ]]; then options+=" quick=1"; fi
    if [[ -n $MINUTES && $mode == soak ]]; then options+=" minutes=$MINUTES"; fi
    echo "$options"
}

# The demonstration; its picture of physical memory (the PHYSMAP lines) becomes
# target/demo/physmap.png.
demo() {
    user_qemu_args
    "$QEMU_RUN" "${QEMU_ARGS[@]}" --picture "$TARGET_DIR/demo/physmap.png" --opts "$(kernel_options demo)"
}

bench() {
    if [[ $GDB -eq 0 ]]; then
        cargo run --quiet --release -p mm --features std --example buddy_bench
        cargo run --quiet --release -p mm --features std --example contig_bench
    fi
    # Shootdown figures go up to 7 remote CPUs: 8 CPUs unless told otherwise. 6 GiB: the
    # 1 GiB exchange is measured against three migrations through a spare block, which
    # needs three free 1 GiB blocks (a 4 GiB guest has two).
    SMP=${SMP:-8}
    MEM=${MEM:-6G}
    user_qemu_args
    "$QEMU_RUN" "${QEMU_ARGS[@]}" --opts "$(kernel_options bench)"
}

# The soak (BIOS, 4 CPUs, 4 GiB unless told otherwise): writers on every CPU but one
# against a mixed stream of moves for --minutes (default 1); exits 0 only without errors.
soak() {
    SMP=${SMP:-4}
    MEM=${MEM:-4G}
    user_qemu_args
    local limit=$((${MINUTES:-1} * 60 + 600))
    "$QEMU_RUN" "${QEMU_ARGS[@]}" --timeout "$limit" --opts "$(kernel_options soak)"
}

# The quick benchmarks, then the check that every expected BENCH line is there and
# parses (no timing is checked). They run on the benchmarks' own machine (BIOS, 8 CPUs,
# 6 GiB) whatever --uefi/--smp/--mem chose for the in-kernel tests: a smaller guest has
# too few 1 GiB blocks for the order-18 and 1 GiB exchange figures.
bench_quick_checked() {
    local out=$LOG_DIR/bench-quick-console.log rc=0
    QUICK=1
    UEFI=0
    SMP=8
    MEM=""
    bench 2>&1 | tee "$out" || rc=$?
    "$TARGET_DIR/release/bench-check" "$out" "$SMP"
    return "$rc"
}

# ---------------------------------------------------------------- test

STEP_NAMES=()
STEP_PASSED=()
STEP_FAILED=()
STEP_SKIPPED=()
STEP_SECS=()
STEP_RESULT=()
# Per step, the lines naming what failed (qemu-run's `FAILED: test: why`, cargo's `test x
# ... FAILED`, a TIMEOUT), repeated under the summary so that its tail alone says what broke.
STEP_FAILURES=()

# Counts (passed, failed, skipped) from cargo's `test result: ok. N passed; M failed;
# ...` lines; cargo has no skip of the "could not check" kind, so skipped is 0.
count_cargo() {
    local log=$1 passed=0 failed=0 p f
    while read -r p f; do
        passed=$((passed + p))
        failed=$((failed + f))
    done < <(sed -nE 's/^test result: [A-Za-z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$log")
    echo "$passed $failed 0"
}

# Counts (passed, failed, skipped) from the kernel's last `N passed, N failed, N
# skipped` line; without one, from its `test x ... ok` / `skipped:` / `FAILED` lines,
# and the step fails (a run without its summary did not end cleanly).
count_kernel() {
    local log=$1 summary
    summary=$(sed -nE 's/^[[:space:]]*([0-9]+) passed, ([0-9]+) failed(, ([0-9]+) skipped)?.*/\1 \2 \4/p' "$log" | tail -n 1)
    if [[ -n $summary ]]; then
        read -r passed failed skipped <<<"$summary"
        echo "$passed $failed ${skipped:-0}"
        return
    fi
    local passed failed skipped
    passed=$(grep -cE '^test [^ ]+ \.\.\. (.*[ )])?ok$' "$log" || true)
    failed=$(grep -cE '^(test [^ ]+ \.\.\. (.*[ )])?)?FAILED' "$log" || true)
    skipped=$(grep -cE '^test [^ ]+ \.\.\. (.*[ )])?skipped' "$log" || true)
    echo "$passed $failed $skipped nosummary"
}

# Tests libtest reported as running for over 60 s that never finished.
unfinished_cargo_tests() {
    awk '/^test .* has been running for over/ { running[$2] = 1 }
         /^test .* \.\.\. / { delete running[$2] }
         END { for (t in running) printf "%s ", t }' "$1"
}

# run_step NAME KIND COMMAND...: run it (output live and in a log), count its tests
# (KIND cargo or kernel), record the outcome. Never stops the script. Cargo steps are
# killed after MMK_HOST_TIMEOUT seconds (QEMU runs have their own timeout).
run_step() {
    local name=$1 kind=$2
    shift 2
    local slug log start rc counts passed failed skipped extra="" limit=()
    slug=$(tr -cs 'A-Za-z0-9' '-' <<<"$name" | sed 's/-$//')
    # A file name may not pass 255 bytes: a long step name keeps its start and a hash.
    if [[ ${#slug} -gt 200 ]]; then
        slug="${slug:0:180}-$(cksum <<<"$slug" | cut -d' ' -f1)"
    fi
    log=$LOG_DIR/$slug.log
    if [[ $kind == cargo ]]; then
        # Without a terminal (CI) timeout kills the whole process group, test binaries
        # included; at a terminal it stays in the foreground so Ctrl-C still works.
        limit=(timeout --kill-after=30)
        [[ -t 0 ]] && limit+=(--foreground)
        limit+=("$HOST_TIMEOUT")
    fi
    echo
    note "$name"
    start=$SECONDS
    set +e
    # The subshell turns errexit back on for shell functions run as steps.
    (set -e; "${limit[@]}" "$@") 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    case $kind in
        cargo) counts=$(count_cargo "$log") ;;
        kernel) counts=$(count_kernel "$log") ;;
        *) counts="0 0 0" ;;
    esac
    if [[ $kind == cargo && ($rc -eq 124 || $rc -eq 137) ]]; then
        echo "TIMEOUT: ${name} hung after $HOST_TIMEOUT s; still running: $(unfinished_cargo_tests "$log")" |
            tee -a "$log"
    fi
    read -r passed failed skipped extra <<<"$counts"
    if [[ $kind == kernel && $extra == nosummary ]]; then
        note "$name: the kernel printed no 'N passed, N failed, N skipped' summary: the step fails"
        [[ $rc -ne 0 ]] || rc=1
    fi
    # A run that crashed, timed out, ran no test or did not build counts as at least one
    # failure.
    if [[ $rc -ne 0 && $failed -eq 0 ]]; then
        failed=1
    fi
    STEP_NAMES+=("$name")
    STEP_PASSED+=("$passed")
    STEP_FAILED+=("$failed")
    STEP_SKIPPED+=("$skipped")
    STEP_SECS+=($((SECONDS - start)))
    if [[ $rc -eq 0 && $failed -eq 0 ]]; then
        STEP_RESULT+=(ok)
    else
        STEP_RESULT+=("FAILED (exit $rc, log $log)")
    fi
    STEP_FAILURES+=("$(grep -aE '^test [^ ]+ \.\.\. FAILED$|^TIMEOUT|^qemu-run: .*FAILED' "$log" |
        head -n 5 | cut -c1-400 || true)")
}

# rustfmt and clippy -D warnings over the host crates and the kernel.
lint() {
    cargo fmt --all --check
    (cd kernel && cargo fmt --check)
    cargo clippy --release -p mm --features std --all-targets -- -D warnings
    cargo clippy --release -p boot-tests --all-targets -- -D warnings
    cargo clippy --release -p fwparse --all-targets -- -D warnings
    cargo kclippy
}

test_all() {
    local cargo_filter=()
    [[ -n $FILTER ]] && cargo_filter=("$FILTER")
    mkdir -p "$LOG_DIR"
    note "seed $SEED (repeat this run with --seed $SEED)"

    # A build failure is a failed step; the host tests still run, the QEMU steps cannot.
    run_step "build: kernel, images, runner" build build
    local built=1
    [[ ${STEP_RESULT[-1]} == ok ]] || built=0
    run_step "lint: rustfmt, clippy -D warnings" lint lint

    # Under --gdb only the in-kernel tests run: QEMU waits for the debugger at once.
    if [[ $GDB -eq 0 ]]; then
        run_step "host: mm unit and property tests" cargo \
            cargo test -p mm --features std --release -- "${cargo_filter[@]}"
        run_step "host: fwparse property tests" cargo \
            cargo test -p fwparse --release -- "${cargo_filter[@]}"
        run_step "host: QEMU runner unit tests" cargo \
            cargo test -p boot-tests --release --lib --bins -- "${cargo_filter[@]}"
        run_step "host: kernel layering check" cargo \
            cargo test -p boot-tests --release --test kernel_layers -- "${cargo_filter[@]}"
    fi

    local configs=("${KERNEL_TEST_CONFIGS[@]}")
    if [[ $UEFI -eq 1 || -n $SMP || -n $MEM || $GDB -eq 1 ]]; then
        local firmware=bios
        [[ $UEFI -eq 1 ]] && firmware=uefi
        configs=("$firmware ${SMP:-4} ${MEM:-4G}")
    fi
    local config firmware smp mem extra args options
    if [[ $built -eq 0 ]]; then
        note "the build failed: skipping the in-kernel tests and the boot tests"
        configs=()
    fi
    for config in "${configs[@]}"; do
        read -r firmware smp mem extra <<<"$config"
        args=(--images "$IMAGES" --smp "$smp" --mem "$mem" --timeout "$TEST_TIMEOUT"
            --test-timeout "$ONE_TEST_TIMEOUT")
        [[ $firmware == uefi ]] && args+=(--uefi)
        [[ $GDB -eq 1 ]] && args+=(--gdb)
        options=$(kernel_options test)
        local word
        for word in $extra; do
            case $word in
                qemu=*) args+=(--qemu-arg "${word#qemu=}") ;;
                # --filter replaces the configuration's own filter (a key given twice
                # is refused by the kernel).
                filter=*) [[ -n $FILTER ]] || options+=" $word" ;;
                *) options+=" $word" ;;
            esac
        done
        run_step "kernel: tests $firmware ${smp}cpu $mem${extra:+ $extra}" kernel \
            "$QEMU_RUN" --tests "${args[@]}" --opts "$options"
    done

    if [[ $GDB -eq 0 && $built -eq 1 ]]; then
        # Steps run in a subshell: what bench sets (SMP, QUICK) stays there.
        # The quick bench checks that every BENCH line is there: with a test filter it
        # would run only the groups the filter names, so it is left out.
        if [[ -n $FILTER ]]; then
            note "--filter $FILTER: the quick bench is left out (./run-qemu.sh bench runs it)"
        else
            run_step "bench: quick, every BENCH line present" kernel bench_quick_checked
        fi
        run_step "host: QEMU boot tests" cargo \
            env MMK_REQUIRE_IMAGES=1 MMK_IMAGES="$IMAGES" \
            cargo test -p boot-tests --release --test boot -- --test-threads=2 "${cargo_filter[@]}"
        run_step "host: baked-options boot tests" cargo \
            env MMK_REQUIRE_IMAGES=1 MMK_BOOT_BIN="$TARGET_DIR/release/boot" MMK_KERNEL_ELF="$IMAGE_ELF" \
            cargo test -p boot-tests --release --test baked_options -- --test-threads=1 "${cargo_filter[@]}"
    fi

    local i total_passed=0 total_failed=0 total_skipped=0 all_ok=1
    echo
    echo "== test summary (seed $SEED) =="
    printf '%-44s %7s %7s %7s %7s  %s\n' step passed failed skipped time result
    for i in "${!STEP_NAMES[@]}"; do
        printf '%-44s %7d %7d %7d %6ds  %s\n' "${STEP_NAMES[$i]}" "${STEP_PASSED[$i]}" \
            "${STEP_FAILED[$i]}" "${STEP_SKIPPED[$i]}" "${STEP_SECS[$i]}" "${STEP_RESULT[$i]}"
        total_passed=$((total_passed + STEP_PASSED[i]))
        total_failed=$((total_failed + STEP_FAILED[i]))
        total_skipped=$((total_skipped + STEP_SKIPPED[i]))
        [[ ${STEP_RESULT[$i]} == ok ]] || all_ok=0
    done
    for i in "${!STEP_NAMES[@]}"; do
        [[ -n ${STEP_FAILURES[$i]} ]] || continue
        echo "failed in ${STEP_NAMES[$i]}:"
        sed 's/^/  /' <<<"${STEP_FAILURES[$i]}"
    done
    if [[ $total_skipped -gt 0 ]]; then
        echo "$total_passed passed, $total_failed failed, $total_skipped skipped"
    else
        echo "$total_passed passed, $total_failed failed"
    fi
    [[ $all_ok -eq 1 && $total_failed -eq 0 ]]
}

# ---------------------------------------------------------------- main

setup_packages
setup_rust
if [[ $COMMAND == test && -z $SEED ]]; then
    SEED=$(((RANDOM << 15 | RANDOM) % 1000000))
fi
case $COMMAND in
    demo) build; demo ;;
    bench) build; bench ;;
    soak) build; soak ;;
    image) build; image ;;
    test) test_all ;;
esac

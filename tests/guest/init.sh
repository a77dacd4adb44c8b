#!/bin/busybox sh
# PID 1 of the rmaptrace guest (packed by `cargo xtask vm-test`). Runs every
# backend x scenario from /guest.conf (BACKENDS, SCENARIOS, PAGES, ISOLATE) and
# reports over the serial console; the host parses the RMAPTRACE-* lines and
# checks them. Lines must stay whole: the console
# log level is lowered so kernel messages cannot split them, and dmesg is dumped
# at the end instead.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mkdir -p /proc /sys /dev /tmp /var/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
# The rootfs is tmpfs (shmem); the file scenarios need a page-cache filesystem.
mount -t ramfs ramfs /var/tmp
dmesg -n 4

. /guest.conf
echo "RMAPTRACE-BOOT uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"

if insmod /rmapdemo.ko; then
    echo "RMAPTRACE-INSMOD ok"
else
    echo "RMAPTRACE-INSMOD failed"
fi
ulimit -l unlimited

echo "RMAPTRACE-PROBE-BEGIN"
/rmaptrace probe 2>&1
echo "RMAPTRACE-PROBE-END rc=$?"

# One line of a file if it is a JSON object, else null: the RESULT line must parse.
line_or_null() {
    l=$(sed -n "$1" "$2" 2>/dev/null)
    case "$l" in
        "{"*"}") echo "$l" ;;
        *) echo null ;;
    esac
}

# Loading and verifying the eBPF programs takes ~15 s under TCG, so by default one
# rmaptrace per backend traces a shell that runs every scenario in turn (each is
# its own process, checked by pid); ISOLATE=1 starts one rmaptrace per scenario.
cat > /tmp/batch.sh <<'BATCH'
for S in "$@"; do
    if [ "$S" = compat32 ]; then
        /memfd32 >/tmp/report."$S" 2>/tmp/werr."$S"
    else
        RMAPTRACE_SCRATCH_DIR=/var/tmp /rmaptrace workload "$S" --pages "$PAGES" \
            >/tmp/report."$S" 2>/tmp/werr."$S"
    fi
    echo $? >/tmp/rc."$S"
done
BATCH

# Prints the stderr of a run of its own and the line $1 with its exit status
# $2 and the process records of its export $3 (its stderr in $4).
print_run() {
    echo "$1-STDERR-BEGIN"
    cat "$4"
    echo "$1-STDERR-END"
    procs=$(grep '"type":"process"' "$3" | sed '$!s/$/,/' | tr -d '\n')
    echo "$1 {\"rc\":$2,\"processes\":[$procs]}"
}

# Runs backend $1 over scenarios $2..., then prints one REPORT line per scenario
# and one RUN line with the export's header and summary.
run_group() {
    B=$1
    shift
    if [ "$B" = default ]; then FLAG=""; else FLAG="--backend $B"; fi
    rm -f /tmp/o.json /tmp/err /tmp/report.* /tmp/werr.* /tmp/rc.*
    t0=$(cut -d' ' -f1 /proc/uptime)
    # shellcheck disable=SC2086 # FLAG is empty or two words
    PAGES=$PAGES /rmaptrace $FLAG --no-tui --json /tmp/o.json -- /bin/sh /tmp/batch.sh "$@" 2>/tmp/err
    rc=$?
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "RMAPTRACE-STDERR-BEGIN $B $*"
    cat /tmp/err
    echo "RMAPTRACE-STDERR-END $B"
    list=""
    for S in "$@"; do
        echo "RMAPTRACE-WORKLOAD-STDERR $B $S: $(cat /tmp/werr."$S" 2>/dev/null)"
        echo "RMAPTRACE-REPORT {\"backend\":\"$B\",\"scenario\":\"$S\",\"rc\":$(cat /tmp/rc."$S" 2>/dev/null || echo null),\"report\":$(line_or_null 1p /tmp/report."$S")}"
        list="$list${list:+,}\"$S\""
    done
    procs=$(grep '"type":"process"' /tmp/o.json | sed '$!s/$/,/' | tr -d '\n')
    echo "RMAPTRACE-RUN {\"backend\":\"$B\",\"scenarios\":[$list],\"rc\":$rc,\"t0\":$t0,\"t1\":$t1,\"header\":$(line_or_null 1p /tmp/o.json),\"summary\":$(line_or_null '$p' /tmp/o.json),\"processes\":[$procs]}"
}

for B in $BACKENDS; do
    if [ "$ISOLATE" = 1 ]; then
        for S in $SCENARIOS; do run_group "$B" "$S"; done
    else
        # shellcheck disable=SC2086 # one word per scenario
        run_group "$B" $SCENARIOS
    fi
done

# Call sites (--stacks) on the default backend: a C program whose functions
# each fault one kind of mapping a known number of times (tests/programs/
# callsites.c, static, with frame pointers). Its folded stacks are checked. It
# lives a second after its faults: under TCG it could otherwise exit before
# rmaptrace has read what it maps.
rm -f /tmp/s.folded /var/tmp/callsites.dat
/rmaptrace --no-tui --folded /tmp/s.folded -- /callsites /var/tmp/callsites.dat 1 >/tmp/s.out 2>/tmp/s.err
rc=$?
echo "RMAPTRACE-STACKS-STDERR-BEGIN"
cat /tmp/s.err
echo "RMAPTRACE-STACKS-STDERR-END"
sed 's/^/RMAPTRACE-FOLDED /' /tmp/s.folded 2>/dev/null
echo "RMAPTRACE-STACKS {\"rc\":$rc,\"report\":$(line_or_null 1p /tmp/s.out)}"

# --cgroup: a shell moves itself into a child of a new cgroup v2 subtree and
# execs a scenario: the kernel follows it from that exec (its cgroup's
# ancestors checked against the subtree's root), and its record names the
# cgroup. The same scenario run outside the subtree is not traced.
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /sys/fs/cgroup/rmt/inner
rm -f /tmp/cg.json /tmp/cg.err
/rmaptrace --no-tui --json /tmp/cg.json --cgroup /rmt 2>/tmp/cg.err &
cg_pid=$!
i=0
while ! grep -q '"type":"header"' /tmp/cg.json 2>/dev/null && [ $i -lt 120 ]; do
    sleep 1
    i=$((i + 1))
done
/rmaptrace workload shared-anon --pages 32 >/dev/null 2>&1
sh -c 'echo $$ > /sys/fs/cgroup/rmt/inner/cgroup.procs && exec /rmaptrace workload shared-anon --pages 64' >/dev/null 2>&1
# SIGTERM: a background job of a script starts with SIGINT ignored.
kill -TERM $cg_pid
wait $cg_pid
rc=$?
print_run RMAPTRACE-CGROUP "$rc" /tmp/cg.json /tmp/cg.err

# A VMA struct freed unseen (its program can miss a run, nested in an
# interrupt), as every one is with the free hook off: the slab hands the
# freed private VMAs' structs to new shared mappings, which must not take
# the anon_vma records of the structs' earlier VMAs.
rm -f /tmp/uf.json
RMAPTRACE_DISABLE_PROGRAMS=kmem_cache_free /rmaptrace --no-tui --json /tmp/uf.json -- /rmaptrace workload anon-then-shared --pages 64 >/dev/null 2>/tmp/uf.err
rc=$?
print_run RMAPTRACE-UNSEEN-FREES "$rc" /tmp/uf.json /tmp/uf.err

echo "RMAPTRACE-DMESG-BEGIN"
dmesg
echo "RMAPTRACE-DMESG-END"
echo "RMAPTRACE-DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f

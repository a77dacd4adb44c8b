#!/bin/busybox sh
# PID 1 of the rmaptrace guest (packed by `cargo xtask vm-test`). Runs every
# backend x scenario from /guest.conf and reports over the serial console; the host
# parses the RMAPTRACE-* lines and checks them. Lines must stay whole: the console
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

for B in $BACKENDS; do
    if [ "$B" = default ]; then FLAG=""; else FLAG="--backend $B"; fi
    for S in $SCENARIOS; do
        rm -f /tmp/o.json /tmp/report /tmp/err
        t0=$(cut -d' ' -f1 /proc/uptime)
        # shellcheck disable=SC2086 # FLAG is empty or two words
        RMAPTRACE_SCRATCH_DIR=/var/tmp /rmaptrace $FLAG --no-tui --json /tmp/o.json \
            -- /rmaptrace workload "$S" --pages "$PAGES" >/tmp/report 2>/tmp/err
        rc=$?
        t1=$(cut -d' ' -f1 /proc/uptime)
        echo "RMAPTRACE-STDERR-BEGIN $B $S"
        cat /tmp/err
        echo "RMAPTRACE-STDERR-END $B $S"
        echo "RMAPTRACE-RESULT {\"backend\":\"$B\",\"scenario\":\"$S\",\"rc\":$rc,\"t0\":$t0,\"t1\":$t1,\"report\":$(line_or_null 1p /tmp/report),\"header\":$(line_or_null 1p /tmp/o.json),\"summary\":$(line_or_null '$p' /tmp/o.json)}"
    done
done

echo "RMAPTRACE-DMESG-BEGIN"
dmesg
echo "RMAPTRACE-DMESG-END"
echo "RMAPTRACE-DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f

#!/bin/bash
# usage: run.sh "tracepoint fentry"
cd /tmp/vm
cp /work/main/target/x86_64-unknown-linux-musl/release/rmaptrace root/bin/rmaptrace
echo "$1" > root/backends
(cd root && find . | cpio -o -H newc 2>/dev/null) > initramfs.cpio
timeout 600 qemu-system-x86_64 -accel tcg -m 1G -smp 2 -kernel /work/wt-guest/target/vm/kernel/boot/vmlinuz-6.1.0-56-cloud-amd64 -initrd initramfs.cpio -append "console=ttyS0 panic=-1 quiet" -nographic -no-reboot 2>&1 | sed -n '/VMSTART/,/VMDONE/p'

#!/bin/busybox sh
# PID 1 of the vfio-hil initramfs: load the modules that reach the root filesystem, mount the
# controller's filesystem read-only over 9p under a RAM overlay, and hand over to the guest init
# named on the kernel command line (vfiohil.init=...). vfiohil.probe=1 only proves the machine
# runs (used to probe whether KVM works) and powers off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vfiohil.init=*) INIT="${arg#vfiohil.init=}" ;;
    vfiohil.probe=1) echo "VFIOHIL-PROBE-OK"; poweroff -f ;;
  esac
done
for m in $(cat /mods/order); do
  insmod "/mods/$m" || echo "vfio-hil initramfs: insmod $m failed"
done
fail() { echo "VFIOHIL-BOOT-FAILED: $*"; sleep 2; poweroff -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /lower \
  || fail "cannot mount the 9p root (hostroot)"
mount -t tmpfs -o size=40% tmpfs /layer
mkdir -p /layer/upper /layer/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/layer/upper,workdir=/layer/work /newroot \
  || fail "cannot mount the overlay root"
[ -x "/newroot$INIT" ] || fail "guest init $INIT is missing"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot "$INIT"

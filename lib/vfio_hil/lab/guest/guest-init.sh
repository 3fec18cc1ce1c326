#!/bin/bash
# PID 1 of a virtual DUT after the switch to the shared root: mount the API filesystems, bind the
# unpacked kernel's modules where modprobe looks, give root a lean home (the controller's root
# dotfiles would run in this slow guest on every SSH login), bring up the user-mode network and
# start sshd with the rack's keys. Prints VFIOHIL-READY on the console when sshd is up.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vfiohil.state=*) STATE="${arg#vfiohil.state=}" ;;
    vfiohil.modules=*) MODULES="${arg#vfiohil.modules=}" ;;
    vfiohil.hostname=*) NAME="${arg#vfiohil.hostname=}" ;;
  esac
done
release=$(uname -r)
mkdir -p "/lib/modules/$release"
mount --bind "$MODULES" "/lib/modules/$release"
hostname "$NAME"
echo "$NAME" > /etc/hostname
mkdir -p /run/root-home
sed -i 's#^root:\([^:]*\):0:0:\([^:]*\):[^:]*:#root:\1:0:0:\2:/run/root-home:#' /etc/passwd
# Coldplug, as udev would: load the driver of every PCI device, so devices start on the
# driver a normal host gives them (NVMe on nvme) and vfio-hil must give them back to it.
cat /sys/bus/pci/devices/*/modalias | sort -u | xargs modprobe -q -a 2>/dev/null
modprobe virtio_net
ip link set lo up
iface=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
ip link set "$iface" up
ip addr add 10.0.2.15/24 dev "$iface"
ip route add default via 10.0.2.2
mkdir -p /run/sshd
chmod 0755 /run/sshd
if /usr/sbin/sshd -f "$STATE/sshd_config" -E /run/sshd.log; then
  echo "VFIOHIL-READY $(cut -d' ' -f1 /proc/uptime)"
else
  echo "VFIOHIL-BOOT-FAILED: sshd did not start: $(tail -n 3 /run/sshd.log)"
fi
# Stay PID 1; bash reaps the orphans that end up here.
while :; do
  sleep 3600 &
  wait $!
done

#!/bin/sh
# Prints the libvirt domain XML of the tiny guest, shaped like a KubeVirt domain.
# Usage: domain-xml.sh NAME GUEST_DIR DISK_IMAGE TAP_NAME GUEST_IP/PREFIX [MEMORY_MIB] [HIDDEN_NIC_MAC]
#   NAME        domain name, KubeVirt style `<namespace>_<vmi>`
#   GUEST_DIR   output directory of build-guest.sh (vmlinuz, initramfs.gz)
#   DISK_IMAGE  a private copy of data.img (the guest writes to it)
#   TAP_NAME    tap device libvirt creates for the NIC (alias ua-default)
#   HIDDEN_NIC_MAC  optional: a second NIC (eth1 in the guest, QEMU user networking, restricted
#               to the guest) added through <qemu:commandline>, so libvirt does not know it —
#               the way a passed-through SR-IOV VF is invisible to libvirt's interface stats
# Devices: TCG q35, virtio disk alias ua-rootdisk, ethernet NIC alias ua-default, guest agent
# channel, virtio balloon with 2 s stats period, serial console logged to GUEST_DIR/../NAME.log.
set -eu
NAME="$1"; GUEST="$(realpath "$2")"; DISK="$(realpath "$3")"; TAP="$4"; IP="$5"; MEM="${6:-256}"
HIDDEN_MAC="${7:-}"
QEMU_ARGS=""
HIDDEN_PORT=""
if [ -n "$HIDDEN_MAC" ]; then
  # Its own root port at slot 0x10 (libvirt's are at 0x01.x): enumerated after libvirt's NIC, so
  # that one stays eth0.
  # The -device is JSON: QEMU creates JSON devices after legacy ones and in order, so after the
  # root port libvirt defines (also JSON).
  HIDDEN_PORT="<controller type='pci' index='12' model='pcie-root-port'><address type='pci' domain='0x0000' bus='0x00' slot='0x10' function='0x0'/></controller>"
  QEMU_ARGS="  <qemu:commandline>
    <qemu:arg value='-netdev'/><qemu:arg value='user,id=vghidden0,restrict=on'/>
    <qemu:arg value='-device'/><qemu:arg value='{&quot;driver&quot;:&quot;virtio-net-pci&quot;,&quot;netdev&quot;:&quot;vghidden0&quot;,&quot;mac&quot;:&quot;$HIDDEN_MAC&quot;,&quot;bus&quot;:&quot;pci.12&quot;,&quot;addr&quot;:&quot;0x0&quot;}'/>
  </qemu:commandline>"
fi
cat <<XML
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$NAME</name>
  <memory unit='MiB'>$MEM</memory>
  <currentMemory unit='MiB'>$MEM</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$GUEST/vmlinuz</kernel>
    <initrd>$GUEST/initramfs.gz</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 vg.ip=$IP</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='threads'/>
      <source file='$DISK'/>
      <target dev='vda' bus='virtio'/>
      <alias name='ua-rootdisk'/>
    </disk>
    <interface type='ethernet'>
      <target dev='$TAP' managed='yes'/>
      <model type='virtio'/>
      <alias name='ua-default'/>
    </interface>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <serial type='file'>
      <source path='$(dirname "$DISK")/$NAME.console.log'/>
      <target port='0'/>
    </serial>
    $HIDDEN_PORT
    <memballoon model='virtio'>
      <stats period='2'/>
    </memballoon>
  </devices>
$QEMU_ARGS
</domain>
XML

#!/usr/bin/env bash
# Stage qemu-system-x86_64, the libraries ldd lists and the microvm firmware under OUTDIR, laid
# out as in / (add it to the virtual host with `--add OUTDIR:/`). Used to reproduce the
# virtual host's KVM behaviour with QEMU as the microVM monitor.
set -euo pipefail
out=${1:?usage: qemu-bundle.sh OUTDIR}
qemu=$(command -v qemu-system-x86_64)
rm -rf "$out"
mkdir -p "$out/usr/bin" "$out/usr/share/qemu"
cp -L "$qemu" "$out/usr/bin/"
ldd "$qemu" | awk '/=>/ {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    [ -f "$lib" ] || continue
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
done
for f in qboot.rom bios-microvm.bin pvh.bin linuxboot_dma.bin; do
    cp -L "/usr/share/qemu/$f" "$out/usr/share/qemu/$f"
done
du -sh "$out"

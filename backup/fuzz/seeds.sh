#!/usr/bin/env bash
# Seed corpus of the disk_image fuzz target: small real images made by the real tools (ext2/3/4,
# metadata_csum, NTFS, an MBR and a GPT table around an ext4 partition), so the fuzzer starts from
# valid structures instead of random bytes. Writes corpus/disk_image/ (gitignored).
# Usage: backup/fuzz/seeds.sh   (needs e2fsprogs, fdisk, ntfs-3g)
set -euo pipefail
cd "$(dirname "$0")"
OUT=corpus/disk_image
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT" "$TMP/src/dir/sub"
echo hello >"$TMP/src/a.txt"
printf 'x%.0s' $(seq 3000) >"$TMP/src/dir/sub/b.txt"
ln -s a.txt "$TMP/src/link"
ln "$TMP/src/a.txt" "$TMP/src/hard"
export PATH="$PATH:/usr/sbin:/sbin"
for t in ext2 ext3 ext4; do
  rm -f "$OUT/$t.img"
  mkfs.ext4 -q -F -t "$t" -b 1024 -N 32 -d "$TMP/src" "$OUT/$t.img" 256k
done
rm -f "$OUT/ext4-csum.img"
mkfs.ext4 -q -F -t ext4 -O metadata_csum,64bit,^has_journal -b 1024 -N 32 -d "$TMP/src" "$OUT/ext4-csum.img" 256k
rm -f "$OUT/ntfs.img"
truncate -s 2M "$OUT/ntfs.img"
mkntfs -q -F -Q "$OUT/ntfs.img" >/dev/null 2>&1
ntfscp "$OUT/ntfs.img" "$TMP/src/a.txt" a.txt
for label in dos gpt; do
  img="$OUT/$label.img"
  rm -f "$img"
  truncate -s 600k "$img"
  printf 'label: %s\nstart=64, size=512, type=%s\n' "$label" \
    "$([ $label = dos ] && echo 83 || echo 0FC63DAF-8483-4772-8E79-3D69D8477DE4)" | sfdisk -q "$img"
  mkfs.ext4 -q -F -t ext4 -b 1024 -N 16 -E offset=$((64 * 512)) -d "$TMP/src" "$img" 256k
done
ls -l "$OUT"

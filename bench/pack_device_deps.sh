#!/usr/bin/env bash
# Packs, into an ignored folder of the checkout (default .whl/), the Python packages the GPU machines lack
# (ray, imageio-ffmpeg with its ffmpeg binary, einops, ...) as one xz tarball of unpacked CPython 3.12 x86-64
# wheels: as wheels they are over the 64 MiB that a device call can carry, xz-compressed they fit.
#   bash bench/pack_device_deps.sh [DEST]
# On the GPU machine:  mkdir -p /tmp/site && tar -xJf .whl/device-site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site
set -euo pipefail
dest=${1:-.whl}
mkdir -p "$dest"
bash ../shared/tools/device-wheels.sh "$dest" einops==0.8.1 imageio==2.38.1 imageio-ffmpeg==0.7.0 click==8.1.8 \
  tqdm==4.67.1 >/dev/null
site=$(mktemp -d)
for w in "$dest"/*.whl; do unzip -q -o "$w" -d "$site"; done
chmod +x "$site"/ray/core/src/ray/gcs/gcs_server "$site"/ray/core/src/ray/raylet/raylet 2>/dev/null || true
chmod +x "$site"/imageio_ffmpeg/binaries/* 2>/dev/null || true
# ray libraries nothing here uses (actors, tasks and ray.util are all in ray core)
rm -rf "$site"/ray/{rllib,data,serve,tune,train,llm,air,workflow}
tar -C "$site" -cJf "$dest/device-site.tar.xz" .
rm -rf "$site" "$dest"/*.whl
du -h "$dest/device-site.tar.xz"

#!/usr/bin/env bash
# Idempotent set-up: Debian packages, a venv at .venv (Debian's CPython 3.11, the one orthanc-python embeds),
# and this package installed editable. Re-running does only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  orthanc orthanc-python orthanc-dicomweb   # the DICOM server and our plugin host
  dcmtk                                      # storescu / dsrdump / dcmcjpeg ...: real modality + SR dump
  dicom3tools                                # dciodvfy / dcentvfy: IOD validators
  pixelmed-apps libpixelmed-java             # DicomSRValidator (TID 1500 checks)
  default-jdk-headless                       # java for pixelmed; javac lets the SR validator batch files
  chromium fonts-dejavu-core                 # headless browser tests (Orthanc Explorer panel, OHIF)
  iproute2 util-linux                        # ip + unshare: the Ray tests run in a private network namespace
  python3-venv python3-dev
)
# npm fetches the pinned OHIF build; a machine with Node.js from elsewhere already has it (Debian's npm would
# conflict with that nodejs)
command -v npm > /dev/null || APT_PACKAGES+=(npm)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=/usr/bin/python3.11
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi

# Reinstall only when the dependency list changed.
stamp=".venv/.branet-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x .venv/bin/branet ]; then
  echo "setup: installing Python dependencies into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test,ray]'
  echo "$want" > "$stamp"
fi
# The OHIF viewer the node serves under /ohif/: the prebuilt dist of a pinned @ohif/app, checked against npm's
# integrity value before it is unpacked (branet_pacs/orthanc/viewer.py names the version and the value).
ohif_version=$(.venv/bin/python -c "from branet_pacs.orthanc.viewer import OHIF_VERSION; print(OHIF_VERSION)")
ohif_integrity=$(.venv/bin/python -c "from branet_pacs.orthanc.viewer import OHIF_INTEGRITY; print(OHIF_INTEGRITY)")
ohif_dir="var/ohif/$ohif_version"
if [ ! -f "$ohif_dir/index.html" ]; then
  echo "setup: fetching OHIF $ohif_version (npm)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "@ohif/app@$ohif_version" > /dev/null)
  tarball=$(ls "$tmp"/ohif-app-*.tgz)
  got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
  if [ "$got" != "$ohif_integrity" ]; then
    echo "setup: OHIF tarball integrity $got is not the pinned $ohif_integrity" >&2; rm -rf "$tmp"; exit 1
  fi
  mkdir -p "$ohif_dir.tmp" && tar -xzf "$tarball" -C "$ohif_dir.tmp" --strip-components=2 package/dist
  rm -rf "$ohif_dir" && mv "$ohif_dir.tmp" "$ohif_dir" && rm -rf "$tmp"
fi

# The inference engine's graphs, exported once from the shipped weights (kept while their checksums hold).
.venv/bin/branet export-models > /dev/null || echo "setup: warning: exporting the models failed; they run on PyTorch"
echo "setup: ok ($(.venv/bin/python --version), branet at .venv/bin/branet)"

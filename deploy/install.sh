#!/usr/bin/env bash
# Install the line-side runtime on a Jetson (JetPack 6/7) or a small x86 box, as a service.
#
#   sudo deploy/install.sh [WHEEL_OR_PROJECT_DIR] [--root /opt/lineside] [--no-apt] [--start]
#
# Creates the `lineside` user (groups video, gpio, dialout, render where they exist), the
# install root with its venv, installs the edge runtime (never torch), a starting config in
# /etc/lineside, the systemd units, and enables them. Safe to run again (an upgrade: the wheel
# is reinstalled, units are refreshed, config and bundles are left alone).
#
# Jetson: the venv is made with --system-site-packages so that JetPack's tensorrt, cv2 (with
# GStreamer) and numpy are used; the wheel goes in with --no-deps so pip does not shadow them
# with PyPI builds (PyPI's OpenCV has no GStreamer; a numpy 2 would break JetPack's cv2).
# x86: a plain venv with ONNX Runtime from PyPI.
set -euo pipefail

ROOT=/opt/lineside
SERVICE_USER=lineside
ETC=/etc/lineside
STATE=/var/lib/lineside
UNIT_DIR=/etc/systemd/system
SRC=""
APT=1
START=0

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=${2:?--root needs a folder}; shift 2 ;;
        --no-apt) APT=0; shift ;;
        --start) START=1; shift ;;
        -h|--help) usage 0 ;;
        -*) echo "unknown option: $1" >&2; usage 2 ;;
        *) SRC=$1; shift ;;
    esac
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(cd "$HERE/.." && pwd)
SRC=${SRC:-$PROJECT}
VENV=$ROOT/venv

log() { printf '==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "run as root (sudo $0 ...)" >&2
    exit 1
fi
if [ ! -e "$SRC" ]; then
    echo "no such wheel or project folder: $SRC" >&2
    exit 1
fi

JETSON=0
if [ -f /etc/nv_tegra_release ] || dpkg-query -W -f='${Status}' nvidia-l4t-core 2>/dev/null | grep -q "ok installed"; then
    JETSON=1
fi
log "box: $([ "$JETSON" -eq 1 ] && echo "Jetson ($(head -n 1 /etc/nv_tegra_release 2>/dev/null || echo L4T))" || echo "no Jetson: ONNX Runtime")"
if [ "$JETSON" -eq 1 ]; then
    # The pins for this JetPack (deploy/jetpack.py keeps the one table); refuses an
    # unsupported release (JetPack 6.0's TensorRT 8.6) before anything is changed.
    JETSON_PINS=$(python3 "$HERE/jetpack.py" pins) || exit 1
    log "pins for this JetPack: $JETSON_PINS"
fi

# ---- system packages --------------------------------------------------------------------
if [ "$APT" -eq 1 ]; then
    pkgs=(python3-venv python3-pip python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
          gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
          gstreamer1.0-plugins-bad sqlite3)
    if [ "$JETSON" -eq 1 ]; then
        # JetPack's own TensorRT bindings, OpenCV (built with GStreamer) and numpy.
        pkgs+=(python3-libnvinfer python3-numpy python3-yaml libopencv-python)
    fi
    missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "apt: ${missing[*]}"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
fi

# ---- user and folders -------------------------------------------------------------------
if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    log "user: $SERVICE_USER"
    useradd --system --user-group --home-dir "$STATE" --shell /usr/sbin/nologin "$SERVICE_USER"
fi
for g in video gpio dialout render i2c; do
    if getent group "$g" >/dev/null && ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx "$g"; then
        log "group: $SERVICE_USER joins $g"
        usermod -a -G "$g" "$SERVICE_USER"
    fi
done
install -d -m 0755 -o "$SERVICE_USER" -g "$SERVICE_USER" "$ROOT" "$ROOT/bundles" "$STATE"
install -d -m 0755 "$ROOT/bin" "$ROOT/deploy" "$ETC"

# ---- the venv and the runtime -----------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "venv: $VENV"
    if [ "$JETSON" -eq 1 ]; then
        python3 -m venv --system-site-packages "$VENV"
    else
        python3 -m venv "$VENV"
    fi
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip || log "pip not upgraded (offline?): going on"
log "install: $SRC"
if [ "$JETSON" -eq 1 ]; then
    "$VENV/bin/python" -m pip install --upgrade --no-deps "$SRC"
    # What JetPack does not ship: the line outputs and a CUDA binding for TensorRT's buffers,
    # the binding pinned to this JetPack's CUDA major (and numpy kept at JetPack's 1.x).
    read -r -a pins <<< "$JETSON_PINS"
    "$VENV/bin/python" -m pip install --upgrade "pymodbus>=3.6" "paho-mqtt>=2.0" asyncua cryptography pyserial "${pins[@]}"
    "$VENV/bin/python" "$HERE/jetpack.py" check
else
    "$VENV/bin/python" -m pip install --upgrade "${SRC}[ort,line]"
fi
chown -R "$SERVICE_USER:$SERVICE_USER" "$ROOT/bundles"

# ---- config, units, watchdog --------------------------------------------------------------
if [ ! -f "$ETC/config.yaml" ]; then
    log "config: $ETC/config.yaml (from deploy/config/example.yaml: edit source and line)"
    install -m 0644 "$HERE/config/example.yaml" "$ETC/config.yaml"
fi
if [ ! -f "$ETC/lineside.env" ]; then
    cat > "$ETC/lineside.env" <<EOF
# Read by lineside-edge.service and lineside-health.service.
LINESIDE_ROOT=$ROOT
# The TensorRT plan that ExecStartPre builds: precision and batch range as in config.yaml's engine:
EDGE_PRECISION=fp16
EDGE_BATCH=1,4
# More \`edge build\` options, e.g. for a DLA plan (one static batch, so EDGE_BATCH=4 then):
#EDGE_BUILD_ARGS=--dla 0
# Options for the watchdog's \`edge check --config ...\` (e.g. add --max-age 600 on a line that never idles)
HEALTH_ARGS=--engine none
EOF
fi
install -m 0755 "$HERE/bin/lineside-watchdog" "$ROOT/bin/lineside-watchdog"
install -m 0644 "$HERE/README.md" "$ROOT/deploy/README.md"
for unit in lineside-edge.service lineside-health.service lineside-health.timer jetson-clocks.service; do
    sed -e "s#/opt/lineside#$ROOT#g" "$HERE/systemd/$unit" > "$UNIT_DIR/$unit.tmp"
    chmod 0644 "$UNIT_DIR/$unit.tmp"
    mv -f "$UNIT_DIR/$unit.tmp" "$UNIT_DIR/$unit"
done
dropin=$UNIT_DIR/lineside-edge.service.d
if [ "$JETSON" -eq 0 ]; then
    # No TensorRT here: no plan to build before the start.
    install -d -m 0755 "$dropin"
    printf '[Service]\nExecStartPre=\n' > "$dropin/no-tensorrt.conf"
else
    rm -f "$dropin/no-tensorrt.conf"
fi

systemctl daemon-reload
systemctl enable lineside-edge.service lineside-health.timer
if [ "$JETSON" -eq 1 ]; then
    systemctl enable jetson-clocks.service
fi
systemctl start lineside-health.timer
if [ "$START" -eq 1 ]; then
    systemctl restart lineside-edge.service
fi

log "done. Next: put a bundle on the box and activate it:"
echo "    sudo -u $SERVICE_USER $VENV/bin/edge install BUNDLE.tar.gz --root $ROOT --activate"
echo "    sudo systemctl restart lineside-edge && $VENV/bin/edge check --config $ETC/config.yaml"

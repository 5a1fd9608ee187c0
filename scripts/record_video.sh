#!/usr/bin/env bash
# Records a test video with GStreamer's videotestsrc and checks that it replays frame-exactly.
#
#   scripts/record_video.sh OUT.mp4 [FRAMES=90] [WIDTH=320] [HEIGHT=240] [PATTERN=smpte]
#
# H.264 (openh264enc, constrained baseline: no B-frames, so decode order is display order
# and every frame comes back) in MP4, 30 fps, the pattern scrolling 2 px per frame.
# Idempotent: an existing non-empty OUT is kept unless FORCE=1. The video is written to a
# temporary file and only moved to OUT once it has been checked: it decodes to exactly
# FRAMES frames of WIDTHxHEIGHT with distinct timestamps.
set -euo pipefail

die() { echo "record_video.sh: $*" >&2; exit 1; }

[ $# -ge 1 ] && [ $# -le 5 ] || die "usage: $0 OUT.mp4 [FRAMES=90] [WIDTH=320] [HEIGHT=240] [PATTERN=smpte]"
out=$1
frames=${2:-90}
width=${3:-320}
height=${4:-240}
pattern=${5:-smpte}
for arg in frames width height; do
    [[ ${!arg} =~ ^[1-9][0-9]*$ ]] || die "$arg must be a positive integer, got '${!arg}'"
done
# I420 needs even dimensions, and openh264enc rejects odd ones.
(( width % 2 == 0 && height % 2 == 0 )) || die "WIDTH and HEIGHT must be even, got ${width}x${height}"

if [ -s "$out" ] && [ "${FORCE:-0}" != 1 ]; then
    echo "record_video.sh: $out exists, kept (FORCE=1 re-records it)"
    exit 0
fi

command -v gst-launch-1.0 >/dev/null 2>&1 \
    || die "gst-launch-1.0 not found: install the GStreamer 1.x tools and plugins
    (Debian/Ubuntu: apt-get install gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav)"
if command -v gst-inspect-1.0 >/dev/null 2>&1; then
    for element in videotestsrc videoconvert openh264enc h264parse mp4mux decodebin fakesink; do
        gst-inspect-1.0 --exists "$element" \
            || die "GStreamer element '$element' is missing (openh264enc, h264parse: gstreamer1.0-plugins-bad; mp4mux: -good; decoder: gstreamer1.0-libav)"
    done
fi

mkdir -p "$(dirname -- "$out")"
tmp=$(mktemp "$(dirname -- "$out")/.record-XXXXXX")
chmod =rw "$tmp"  # mktemp makes it 0600; give it the usual mode (umask applies)
log=$(mktemp)
trap 'rm -f -- "$tmp" "$log"' EXIT

# openh264 prints "EncodeFrame(), cmInitParaError" on stderr when draining at EOS; it is
# harmless, so the log is shown only when the pipeline fails.
if ! gst-launch-1.0 -q videotestsrc pattern="$pattern" horizontal-speed=2 num-buffers="$frames" \
        ! "video/x-raw,width=$width,height=$height,framerate=30/1" \
        ! videoconvert ! openh264enc ! h264parse ! mp4mux \
        ! filesink location="$tmp" >"$log" 2>&1; then
    cat "$log" >&2
    die "recording pipeline failed (pattern=$pattern ${width}x${height} $frames frames)"
fi
[ -s "$tmp" ] || die "recording pipeline wrote nothing"

# Decode it back. With silent=false, -v prints one "last-message = chain" line per buffer
# that reaches fakesink, with its pts, and the negotiated caps of every pad.
if ! gst-launch-1.0 -v filesrc location="$tmp" ! decodebin ! fakesink silent=false >"$log" 2>&1; then
    cat "$log" >&2
    die "the recorded file does not decode"
fi
decoded=$(grep -c 'last-message = chain' "$log" || true)
distinct_pts=$(grep 'last-message = chain' "$log" | grep -o 'pts: [0-9:.]*' | sort -u | wc -l)
raw_caps=$(grep -m1 'GstFakeSink:fakesink0.GstPad:sink: caps = video/x-raw' "$log" || true)
profile=$(grep -m1 -o 'profile=(string)[a-z-]*' "$log" | cut -d')' -f2 || true)
[ "$decoded" -eq "$frames" ] || die "decoded $decoded frames, want exactly $frames"
[ "$distinct_pts" -eq "$frames" ] || die "decoded frames have $distinct_pts distinct timestamps, want $frames"
[[ $raw_caps == *"width=(int)$width,"* && $raw_caps == *"height=(int)$height,"* ]] \
    || die "decoded caps are not ${width}x${height}: ${raw_caps:-none}"
case "$profile" in
    baseline | constrained-baseline) ;;
    *) die "H.264 profile is '${profile:-unknown}', want (constrained-)baseline: B-frames would reorder frames" ;;
esac

# gst-discoverer-1.0 (Debian: gstreamer1.0-plugins-base-apps) is optional: the decode
# above already checked what replay needs.
if command -v gst-discoverer-1.0 >/dev/null 2>&1; then
    gst-discoverer-1.0 "$tmp" >"$log" 2>&1 || { cat "$log" >&2; die "gst-discoverer-1.0 cannot read the file"; }
    grep -q 'H.264' "$log" || { cat "$log" >&2; die "gst-discoverer-1.0 finds no H.264 stream"; }
fi

mv -f -- "$tmp" "$out"
echo "record_video.sh: $out: $pattern ${width}x${height} @30fps, H.264 $profile, $decoded frames decoded, $(stat -c %s -- "$out") bytes"

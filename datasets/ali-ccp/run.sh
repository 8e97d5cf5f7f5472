#!/bin/sh
# Prepare the Ali-CCP data for models/multitask/esmm/config_bigdata.yaml (see doc/data.md).
#
#   sh datasets/ali-ccp/run.sh                      raw/ files present: convert them;
#                                                   otherwise download PaddleRec's 100k-row sample
#   sh datasets/ali-ccp/run.sh --raw DIR [--out DIR] [--min-count N] [--workers N]
#                              [--skip-bad] [--force] [--fields LIST] [--format binary|slot]
#                              [--vocab OLD_OUT [--freeze-vocab]]
#                                                   convert the four raw Tianchi files in DIR:
#                                                   the binary data set the trainers read, or
#                                                   with --format slot PaddleRec's slot text;
#                                                   --vocab keeps OLD_OUT's feasign numbers and
#                                                   appends new ids (day-by-day training)
#   sh datasets/ali-ccp/run.sh --synthetic N [--out DIR] [--seed S] [--format slot|raw] ...
#                                                   generate a synthetic data set (synthetic.py)
#
# --out defaults to this folder, where config_bigdata.yaml looks for train_data/ and test_data/.
# Environment: PYTHON (interpreter), ALICCP_DIR (default output folder, and where raw/ is looked
# for), ALICCP_BASE_URL (download location), ALICCP_CONNECT_TIMEOUT (seconds, default 5).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
DATA_DIR=${ALICCP_DIR:-$HERE}
BASE_URL=${ALICCP_BASE_URL:-https://paddlerec.bj.bcebos.com/esmm}
CONNECT_TIMEOUT=${ALICCP_CONNECT_TIMEOUT:-5}
RAW_FILES="sample_skeleton_train.csv sample_skeleton_test.csv common_features_train.csv common_features_test.csv"

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif command -v python3 >/dev/null 2>&1; then
    PY=python3
else
    PY=python
fi

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
    echo "run.sh: $*" >&2
    exit 2
}

mode=auto
raw=""
n=""
out=""
force=0
# Arguments other than --raw/--synthetic/--out are passed on to the Python script.
extra_file=$(mktemp)
trap 'rm -f "$extra_file"' EXIT
while [ $# -gt 0 ]; do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --raw) [ $# -ge 2 ] || die "--raw needs a folder"; mode=raw; raw=$2; shift 2 ;;
        --raw=*) mode=raw; raw=${1#--raw=}; shift ;;
        --synthetic) [ $# -ge 2 ] || die "--synthetic needs a row count"; mode=synthetic; n=$2; shift 2 ;;
        --synthetic=*) mode=synthetic; n=${1#--synthetic=}; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a folder"; out=$2; shift 2 ;;
        --out=*) out=${1#--out=}; shift ;;
        *)
            [ "$1" = --force ] && force=1
            printf '%s\n' "$1" >>"$extra_file"
            shift
            ;;
    esac
done
out=${out:-$DATA_DIR}

# Re-read the pass-through arguments into "$@" (one per line; no newlines inside arguments).
set --
while IFS= read -r a; do set -- "$@" "$a"; done <"$extra_file"

case $mode in
    raw)
        exec "$PY" "$HERE/convert_raw.py" --raw "$raw" --out "$out" "$@"
        ;;
    synthetic)
        exec "$PY" "$HERE/synthetic.py" --n "$n" --out "$out" "$@"
        ;;
esac

# ---- no --raw / --synthetic: raw/ files, else the download ----
present=""
missing=""
for f in $RAW_FILES; do
    if [ -f "$DATA_DIR/raw/$f" ]; then present="$present $f"; else missing="$missing $f"; fi
done
if [ -z "$missing" ]; then
    echo "run.sh: converting the raw Tianchi files in $DATA_DIR/raw/ into $out" >&2
    exec "$PY" "$HERE/convert_raw.py" --raw "$DATA_DIR/raw" --out "$out" "$@"
fi
if [ -n "$present" ]; then
    die "$DATA_DIR/raw/ has${present} but lacks${missing}; put all four Tianchi files there"
fi

for d in train_data test_data; do
    if [ -d "$out/$d" ] && [ -n "$(ls -A "$out/$d")" ] && [ $force -eq 0 ]; then
        die "$out/$d already exists and is not empty; use --force to download again"
    fi
done

# fetch URL FILE: download with a short connect timeout; prints the reason on failure.
fetch() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --connect-timeout "$CONNECT_TIMEOUT" --speed-limit 1024 --speed-time 60 \
            -o "$2" "$1" 2>&1
    elif command -v wget >/dev/null 2>&1; then
        wget -q --timeout="$CONNECT_TIMEOUT" --tries=1 -O "$2" "$1" 2>&1
    else
        "$PY" - "$1" "$2" "$CONNECT_TIMEOUT" <<'EOF' 2>&1
import shutil, sys, urllib.request
url, dst, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
try:
    with urllib.request.urlopen(url, timeout=timeout) as r, open(dst, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)
except Exception as e:
    print(e)
    sys.exit(1)
EOF
    fi
}

mkdir -p "$out"
tmp=$(mktemp -d "$out/.download-XXXXXX")
trap 'rm -rf "$tmp"; rm -f "$extra_file"' EXIT
trap 'exit 130' INT TERM
ok=1
for pair in train_data/traindata_10w.csv test_data/testdata_10w.csv; do
    name=${pair#*/}
    echo "run.sh: downloading $BASE_URL/$name" >&2
    if ! why=$(fetch "$BASE_URL/$name" "$tmp/$name"); then
        ok=0
        break
    fi
done

if [ $ok -eq 0 ]; then
    why=$(printf '%s' "$why" | tr '\n' ' ' | cut -c1-200)
    cat >&2 <<EOF
run.sh: no Ali-CCP data prepared.
  No raw files in $DATA_DIR/raw/, so I tried to download PaddleRec's preprocessed 100k-row sample
  ($BASE_URL/traindata_10w.csv and testdata_10w.csv), and that failed:
  $BASE_URL/$name: ${why:-download failed}
To go on, either
  - download the raw Ali-CCP files from Tianchi, https://tianchi.aliyun.com/dataset/408 (needs a
    free Tianchi login), put sample_skeleton_{train,test}.csv and common_features_{train,test}.csv
    into $DATA_DIR/raw/ and run this script again (or: run.sh --raw DIR --out DIR); or
  - generate a synthetic data set instead: sh $0 --synthetic 1000000
Nothing was written.
EOF
    exit 1
fi

for pair in train_data/traindata_10w.csv test_data/testdata_10w.csv; do
    mkdir -p "$tmp/${pair%/*}"
    mv "$tmp/${pair#*/}" "$tmp/$pair"
done
# Swap the finished folders in; an old folder is only removed after its replacement is there.
for d in train_data test_data; do
    if [ -e "$out/$d" ]; then mv "$out/$d" "$tmp/old-$d"; fi
    mv "$tmp/$d" "$out/$d"
done
echo "run.sh: wrote $out/train_data/traindata_10w.csv and $out/test_data/testdata_10w.csv" >&2

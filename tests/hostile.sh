#!/usr/bin/env bash
# Hostile inputs never crash: each case builds one bad image, label, cache, yaml, weights file, flag or resume in a
# temp folder, runs a binary on it and asserts its outcome — YOLOv5 v7.0's where YOLOv5 has one (a counted warning
# and the image skipped, a label read as YOLOv5 reads it) or one line "y5x: error: ..." naming the file, exit 1 or 2.
# No case may end with a signal (exit ≥ 128: abort 134, segfault 139, SIGFPE 136). tests/hostile.md is the table
# of the cases with YOLOv5's outcome beside y5's.
#   bash tests/hostile.sh BUILD_DIR SOURCE_DIR
set -uo pipefail
build="$1"; src="$2"
work="$(mktemp -d /tmp/y5_hostile.XXXXXX)"
trap 'chmod -R u+rwx "$work" 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
cfg="$src/config/models/yolov5n.yaml"; hyp="$src/config/hyps/hyp.scratch-low.yaml"
small=(--imgsz 64 --batch-size 4 --noplots --noautoanchor --device cpu)
cases=0; failed=0; skipped=0

# expect NAME WANT PATTERN -- COMMAND...: WANT is ok (exit 0, PATTERN in stdout+stderr) or err (exit 1 or 2, a
# "y5<x>: error:" line on stderr containing PATTERN). PATTERN is a grep -E expression ('' matches anything).
expect() {
  local name="$1" want="$2" pat="$3"; shift 4
  cases=$((cases + 1))
  timeout 120 "$@" > "$name.out" 2> "$name.err"
  local rc=$? why=""
  if [ $rc -eq 124 ]; then why="still running after 120 s"
  elif [ $rc -ge 128 ]; then why="killed by a signal (exit $rc)"
  elif [ "$want" = ok ] && [ $rc -ne 0 ]; then why="exit $rc, expected 0"
  elif [ "$want" = err ] && [ $rc -ne 1 ] && [ $rc -ne 2 ]; then why="exit $rc, expected 1 or 2"
  elif [ "$want" = err ] && ! grep -qE "^y5[a-z]*: error: .*${pat}" "$name.err"; then why="no 'y5x: error: ...$pat' line"
  elif [ "$want" = ok ] && ! grep -qE -- "$pat" "$name.out" "$name.err"; then why="no '$pat' in the output"
  elif grep -q "terminate called" "$name.err"; then why="std::terminate"
  fi
  if [ -n "$why" ]; then
    failed=$((failed + 1))
    echo "FAIL $name: $why"; tail -n 5 "$name.out" "$name.err" | sed 's/^/    /'
  fi
}
root=$([ "$(id -u)" = 0 ] && echo yes || echo no)  # root reads files whatever their mode: those cases are skipped

"$build/y5data" --synthetic base --images 4 >/dev/null || { echo "cannot write the synthetic dataset"; exit 1; }
good=base/images/train/00000.jpg
# ds NAME: a copy of the base dataset (4 training images); the case adds its file to NAME/images/train.
ds() { rm -rf "$1"; cp -r base "$1"; }
scan=("$build/y5data" --split train --no-cache --data)  # + NAME/data.yaml

# ---- images: each is skipped with a counted warning naming it, as verify_image_label, or kept as YOLOv5 keeps it
img_case() {  # NAME WANT PATTERN: the image is already in NAME/images/train
  expect "$1" "$2" "$3" -- "${scan[@]}" "$1/data.yaml"
}
ds img_empty; : > img_empty/images/train/x.jpg
img_case img_empty ok "x.jpg: ignoring corrupt image/label: empty file"
ds img_text; echo "not an image" > img_text/images/train/x.jpg
img_case img_text ok "x.jpg: ignoring corrupt image/label: cannot decode"
ds img_trunc; head -c $(($(wc -c < $good) / 2)) $good > img_trunc/images/train/x.jpg
img_case img_trunc ok "x.jpg: ignoring corrupt image/label: truncated JPEG"
ds img_trailing; { cat $good; printf 'trailing garbage'; } > img_trailing/images/train/x.jpg
img_case img_trailing ok "x.jpg: corrupt JPEG restored and saved.*| 5 images, 0 backgrounds, 0 corrupt"
grep -q " 5 images, .*0 corrupt" img_trailing.out || { echo "FAIL img_trailing: the restored JPEG was not kept"; failed=$((failed + 1)); }
[ "$(tail -c 2 img_trailing/images/train/x.jpg | od -An -tx1 | tr -d ' \n')" = ffd9 ] || { echo "FAIL img_trailing: not rewritten"; failed=$((failed + 1)); }
# Without FFD9 at the end: restored when every scanline decodes from the bytes there are (PIL loads it), else
# truncated (PIL: image file is truncated). Two COCO128 files with their last 2 bytes cut, one of each (YOLOv5's
# outcomes in tests/fixtures/jpeg_eoi.txt); skipped in a clone without ../shared.
coco="$src/../shared/data/coco128/images/train2017"
if [ -d "$coco" ]; then
  ds img_noeoi_complete; head -c -2 "$coco/000000000034.jpg" > img_noeoi_complete/images/train/x.jpg
  img_case img_noeoi_complete ok "x.jpg: corrupt JPEG restored and saved"
  grep -q " 5 images, .*0 corrupt" img_noeoi_complete.out || { echo "FAIL img_noeoi_complete: not kept"; failed=$((failed + 1)); }
  ds img_noeoi_cut; head -c -2 "$coco/000000000009.jpg" > img_noeoi_cut/images/train/x.jpg
  img_case img_noeoi_cut ok "x.jpg: ignoring corrupt image/label: truncated JPEG"
fi
ds img_png_named_jpg; python3 - img_png_named_jpg/images/train/x.jpg <<'EOF'
import struct, sys, zlib
def chunk(t, b): return struct.pack('>I', len(b)) + t + b + struct.pack('>I', zlib.crc32(t + b))
raw = b''.join(b'\0' + bytes([(x * 7 + y) % 256 for x in range(48)]) for y in range(16))
open(sys.argv[1], 'wb').write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 16, 16, 8, 2, 0, 0, 0)) +
                              chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
EOF
img_case img_png_named_jpg ok " 5 images, 1 backgrounds, 0 corrupt"
# Decompression bombs: a header declaring more pixels than PIL's limit (2 × 89478485), no pixel data behind it.
bomb() {  # NAME FORMAT W H
  ds "$1"; python3 - "$1/images/train/x.$2" "$2" "$3" "$4" <<'EOF'
import struct, sys, zlib
path, fmt, w, h = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def chunk(t, b): return struct.pack('>I', len(b)) + t + b + struct.pack('>I', zlib.crc32(t + b))
if fmt == 'png':
    d = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)) + chunk(b'IDAT', zlib.compress(b'\0' * 64))
elif fmt == 'bmp':
    d = b'BM' + struct.pack('<IHHI', 54 + 64, 0, 0, 54) + struct.pack('<IiiHHIIiiII', 40, w, h, 1, 24, 0, 0, 0, 0, 0, 0) + b'\0' * 64
else:  # jpg: SOI, SOF0 with the size, then nothing
    d = b'\xff\xd8' + b'\xff\xc0' + struct.pack('>HBHHB', 11, 8, h, w, 1) + b'\x01\x11\x00' + b'\xff\xd9'
open(path, 'wb').write(d)
EOF
  img_case "$1" ok "x.$2: ignoring corrupt image/label: Image size \($(($3 * $4)) pixels\) exceeds limit of 178956970 pixels"
}
bomb img_bomb_png png 20000 20000
bomb img_bomb_png_opencv png 40000 40000   # also past OpenCV's CV_IO_MAX_IMAGE_PIXELS (2^30), which threw
bomb img_bomb_bmp bmp 30000 30000
bomb img_bomb_jpg jpg 65000 65000
ds img_tiny; python3 - img_tiny/images/train/x.png <<'EOF'
import struct, sys, zlib
def chunk(t, b): return struct.pack('>I', len(b)) + t + b + struct.pack('>I', zlib.crc32(t + b))
open(sys.argv[1], 'wb').write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 5, 5, 8, 0, 0, 0, 0)) +
                              chunk(b'IDAT', zlib.compress(b'\0\x80\x80\x80\x80\x80' * 5)) + chunk(b'IEND', b''))
EOF
img_case img_tiny ok "x.png: ignoring corrupt image/label: image size 5x5 <10 pixels"
ds img_dir_named_jpg; mkdir img_dir_named_jpg/images/train/x.jpg
img_case img_dir_named_jpg ok "x.jpg: ignoring corrupt image/label: cannot read the file"
ds img_dangling; ln -s nowhere.jpg img_dangling/images/train/x.jpg
img_case img_dangling ok "x.jpg: ignoring corrupt image/label: cannot read the file"
ds img_symlink_loop; ln -s . img_symlink_loop/images/train/loop
img_case img_symlink_loop ok " 4 images, 0 backgrounds, 0 corrupt"
ds img_hidden; cp $good img_hidden/images/train/.hidden.jpg; mkdir img_hidden/images/train/.git; cp $good img_hidden/images/train/.git/y.jpg
img_case img_hidden ok " 4 images, 0 backgrounds, 0 corrupt"   # glob skips dot files and dot folders
ds img_upper_ext; cp $good img_upper_ext/images/train/X.JPG
img_case img_upper_ext ok " 5 images, 1 backgrounds, 0 corrupt"
ds img_not_image_ext; cp $good img_not_image_ext/images/train/x.gif; echo hi > img_not_image_ext/images/train/notes.txt
img_case img_not_image_ext ok " 4 images, 0 backgrounds, 0 corrupt"
ds img_none; rm img_none/images/train/*
expect img_none err "no images found in .*img_none/images/train" -- "${scan[@]}" img_none/data.yaml
ds img_missing_dir; rm -r img_missing_dir/images/train
expect img_missing_dir err "img_missing_dir/images/train does not exist" -- "${scan[@]}" img_missing_dir/data.yaml
ds img_list_txt; (cd img_list_txt && printf './images/train/00000.jpg\r\n./images/train/00001.jpg\r\n\r\n' > train.txt &&
  sed -i 's#^train: .*#train: train.txt#' data.yaml)
img_case img_list_txt ok " 2 images, 0 backgrounds, 0 corrupt"
ds img_list_binary; head -c 3000 /dev/urandom > img_list_binary/train.txt; sed -i 's#^train: .*#train: train.txt#' img_list_binary/data.yaml
expect img_list_binary err "no images found in .*train.txt" -- "${scan[@]}" img_list_binary/data.yaml
if [ $root = no ]; then
  ds img_unreadable; cp $good img_unreadable/images/train/x.jpg; chmod 000 img_unreadable/images/train/x.jpg
  img_case img_unreadable ok "x.jpg: ignoring corrupt image/label: cannot open the file: Permission denied"
  ds lbl_unreadable; cp $good lbl_unreadable/images/train/x.jpg; echo "0 .5 .5 .1 .1" > lbl_unreadable/labels/train/x.txt
  chmod 000 lbl_unreadable/labels/train/x.txt
  img_case lbl_unreadable ok "x.jpg: ignoring corrupt image/label: .*x.txt: cannot read the label file: Permission denied"
else
  skipped=$((skipped + 2))
fi

# ---- labels: read as YOLOv5 reads them (UTF-8 text, str.splitlines, str.split, Python's float)
lbl() {  # NAME WANT-PATTERN PRINTF-TEXT: x.jpg (a good image) with labels/x.txt
  ds "$1"; cp $good "$1/images/train/x.jpg"; printf -- "$3" > "$1/labels/train/x.txt"
  img_case "$1" ok "$2"
}
corrupt="x.jpg: ignoring corrupt image/label"
lbl lbl_crlf   " 5 images, 0 backgrounds, 0 corrupt, 1[0-9] instances" '0 0.5 0.5 0.1 0.1\r\n1 0.5 0.5 0.2 0.2\r\n'
lbl lbl_cr     " 5 images, 0 backgrounds, 0 corrupt, 1[0-9] instances" '0 0.5 0.5 0.1 0.1\r1 0.5 0.5 0.2 0.2\r'
lbl lbl_ff     " 5 images, 0 backgrounds, 0 corrupt" '0 0.5 0.5 0.1 0.1\f1 0.5 0.5 0.2 0.2'
lbl lbl_vt     " 5 images, 0 backgrounds, 0 corrupt" '0 0.5 0.5 0.1 0.1\v1 0.5 0.5 0.2 0.2\n'
lbl lbl_u2028  " 5 images, 0 backgrounds, 0 corrupt" '0 0.5 0.5 0.1 0.1\xe2\x80\xa81 0.5 0.5 0.2 0.2\n'
lbl lbl_nbsp   " 5 images, 0 backgrounds, 0 corrupt" '0\xc2\xa00.5 0.5 0.1 0.1\n'
lbl lbl_tabs   " 5 images, 0 backgrounds, 0 corrupt" '\t0\t0.5  0.5\t0.1 0.1  \n\n\n'
lbl lbl_hexfloat "$corrupt: .*x.txt:1: '0x1p-2' is not a number" '0 0x1p-2 0.5 0.1 0.1\n'
lbl lbl_nanparen "$corrupt: .*x.txt:1: 'nan\(1\)' is not a number" '0 nan(1) 0.5 0.1 0.1\n'
lbl lbl_underscore " 5 images, 0 backgrounds, 0 corrupt" '0 0.5 0.5 0.1_0 1_0e-1\n'
lbl lbl_bad_underscore "$corrupt: .*'0.1__0' is not a number" '0 0.5 0.5 0.1__0 0.1\n'
lbl lbl_pyforms " 5 images, 0 backgrounds, 0 corrupt" '+0 +.5 5e-1 1E-1 0.1\n'
lbl lbl_inf    "$corrupt: .*x.txt:1: .*inf" '0 0.5 0.5 inf 0.1\n'
lbl lbl_overflow "$corrupt: .*x.txt:1: .*1e39" '0 0.5 0.5 1e39 0.1\n'
lbl lbl_nan    "$corrupt: .*x.txt:1: non-finite label value nan" '0 nan 0.5 0.1 0.1\n'
lbl lbl_class_inf "$corrupt: .*x.txt:1: non-finite label value inf" 'inf 0.5 0.5 0.1 0.1\n'
lbl lbl_bom    "$corrupt: .*x.txt:1: '.+0' is not a number" '\xef\xbb\xbf0 0.5 0.5 0.1 0.1\n'
lbl lbl_latin1 "$corrupt: .*x.txt: 'utf-8' codec can't decode byte 0xe9 in position 18" '0 0.5 0.5 0.1 0.1 \xe9\n'
lbl lbl_nul    "$corrupt: .*x.txt:1: .* is not a number" '0 0.5\x00 0.5 0.1 0.1\n'
lbl lbl_ws_line "$corrupt: .*x.txt:2: a line of only whitespace" '0 0.5 0.5 0.1 0.1\n   \n1 0.5 0.5 0.2 0.2\n'
lbl lbl_cols4  "$corrupt: .*x.txt:1: labels require 5 columns, 4 columns detected" '0 0.5 0.5 0.1\n'
lbl lbl_cols6  "$corrupt: .*x.txt:1: labels require 5 columns, 6 columns detected" '0 0.5 0.5 0.1 0.1 0.1\n'
lbl lbl_ragged "$corrupt: .*x.txt:2: labels require 5 columns, 4 columns detected" '0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1\n'
lbl lbl_negative "$corrupt: .*x.txt:1: negative label value -0.5" '0 -0.5 0.5 0.1 0.1\n'
lbl lbl_over1  "$corrupt: .*x.txt:1: non-normalized or out of bounds coordinate 1.5" '0 1.5 0.5 0.1 0.1\n'
lbl lbl_polygon " 5 images, 0 backgrounds, 0 corrupt" '2 0.1 0.1 0.3 0.1 0.3 0.4 0.1 0.4\n'
lbl lbl_polygon_odd "$corrupt: .*x.txt:1: a polygon needs a class and x y pairs" '2 0.1 0.1 0.3 0.1 0.3 0.4 0.1\n'
lbl lbl_duplicates "x.jpg: 1 duplicate labels removed" '0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1 0.1\n'
lbl lbl_empty  " 5 images, 1 backgrounds, 0 corrupt" ''
lbl lbl_blank_lines " 5 images, 1 backgrounds, 0 corrupt" '\n \n\t\n'
lbl lbl_class_float "$corrupt: .*x.txt:1: class 1.5 is not an integer" '1.5 0.5 0.5 0.1 0.1\n'
ds lbl_is_dir; cp $good lbl_is_dir/images/train/x.jpg; mkdir lbl_is_dir/labels/train/x.txt
img_case lbl_is_dir ok " 5 images, 1 backgrounds, 0 corrupt"
ds lbl_long_line; cp $good lbl_long_line/images/train/x.jpg
python3 -c "print('0' + ' 0.5' * 100000)" > lbl_long_line/labels/train/x.txt
img_case lbl_long_line ok " 5 images, 0 backgrounds, 0 corrupt"
# A class id past 2^31 is reported as the number it is (it wrapped to INT_MIN and crashed the class counts).
ds lbl_class_huge; cp $good lbl_class_huge/images/train/x.jpg; echo "3000000000 0.5 0.5 0.1 0.1" > lbl_class_huge/labels/train/x.txt
expect lbl_class_huge err "x.txt:1: class 3000000000 exceeds nc=3" -- "${scan[@]}" lbl_class_huge/data.yaml
expect lbl_class_huge_train err "x.txt:1: class 3000000000 exceeds nc=3" -- \
  "$build/y5train" --data lbl_class_huge/data.yaml --cfg "$cfg" --hyp "$hyp" "${small[@]}" --epochs 1 --name lbl_class_huge

# ---- label caches: a damaged cache is ignored with a warning, rescanned and rewritten (YOLOv5 rescans)
cache() {  # NAME DAMAGE-COMMAND PATTERN
  ds "$1"; "$build/y5data" --data "$1/data.yaml" --split train > /dev/null
  local c="$1/labels/train.y5cache"; [ -s "$c" ] || { echo "FAIL $1: no cache written"; failed=$((failed + 1)); return; }
  eval "$2"
  expect "$1" ok "$3" -- "$build/y5data" --data "$1/data.yaml" --split train
  grep -q " 4 images, 0 backgrounds, 0 corrupt" "$1.out" || { echo "FAIL $1: the rescan lost images"; failed=$((failed + 1)); }
}
flip='python3 -c "import sys; p=sys.argv[1]; b=bytearray(open(p,\"rb\").read()); b[len(b)//2]^=0x10; open(p,\"wb\").write(b)" $c'
cache cache_flipped_byte "$flip" "ignoring the label cache, its checksum does not match"
cache cache_truncated 'head -c 100 $c > $c.t && mv $c.t $c' "ignoring the label cache, its size does not match"
cache cache_appended 'printf xyz >> $c' "ignoring the label cache, its size does not match"
cache cache_garbage 'head -c 4096 /dev/urandom > $c' "ignoring the label cache, not a y5 label cache"
cache cache_empty ': > $c' "ignoring the label cache, not a y5 label cache"
cache cache_is_dir 'rm $c && mkdir $c' "could not write the label cache"
# A forged cache (checksum recomputed) claiming 2^40 records: refused from its size, not allocated.
cache cache_forged_count 'python3 - $c <<EOF
import struct, sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); body = bytearray(b[32:])
body[0:8] = struct.pack("<Q", 1 << 40)
h = 1469598103934665603
for x in body: h = ((h ^ x) * 1099511628211) & (2**64 - 1)
open(p, "wb").write(bytes(b[:16]) + struct.pack("<QQ", h ^ len(body), len(body)) + bytes(body))
EOF' "ignoring the label cache, its record count exceeds the file"
cache cache_ok 'true' "Scanning cache"

# ---- data yamls: one line naming the file
dy() {  # NAME PATTERN TEXT
  ds "$1"; printf -- "$3" > "$1/data.yaml"; expect "$1" err "$2" -- "${scan[@]}" "$1/data.yaml"
}
expect data_missing err "nowhere.yaml: data yaml does not exist" -- "$build/y5data" --data nowhere.yaml
dy data_malformed "data.yaml: line [0-9]+: malformed yaml" 'train: [images/train\nval: images/val\nnames: [a]\n'
dy data_list "data.yaml: not a data yaml" '- a\n- b\n'
dy data_names_scalar "data.yaml: line [0-9]+: names must be a list or a map" 'train: images/train\nval: images/val\nnames: 5\n'
dy data_nc_mismatch "data.yaml: nc is 5 but names lists 3 classes" 'train: images/train\nval: images/val\nnc: 5\nnames: [a, b, c]\n'
dy data_nc_text "data.yaml: line [0-9]+: nc must be an integer" 'train: images/train\nval: images/val\nnc: many\nnames: [a, b, c]\n'
dy data_names_hugekey "data.yaml: line [0-9]+: names keys must be integers" 'train: images/train\nval: images/val\nnames:\n  0: a\n  99999999999: b\n'
dy data_no_train "data.yaml: data.yaml 'train:' field missing" 'val: images/val\nnames: [a]\n'
ds data_binary; head -c 2000 /dev/urandom > data_binary/data.yaml
expect data_binary err "data.yaml" -- "${scan[@]}" data_binary/data.yaml

# ---- model yamls (--cfg): numbers checked before anything is built
my() {  # NAME PATTERN SED-EXPRESSION on yolov5n.yaml
  sed "$3" "$cfg" > "$1.yaml"
  expect "$1" err "$1.yaml: .*$2" -- "$build/y5train" --cfg "$1.yaml" --summary
}
my cfg_width_zero "width_multiple 0 must be above 0" 's/^width_multiple: .*/width_multiple: 0/'
my cfg_depth_zero "depth_multiple 0 must be above 0" 's/^depth_multiple: .*/depth_multiple: 0/'
my cfg_width_huge "width_multiple 1e\+09 must be above 0 and at most 100" 's/^width_multiple: .*/width_multiple: 1e9/'
my cfg_stride_zero "stride .* out of range" '0,/\[64, 6, 2, 2\]/s//[64, 6, 0, 2]/'
my cfg_kernel_negative "kernel .* out of range" '0,/\[64, 6, 2, 2\]/s//[64, -6, 2, 2]/'
my cfg_number_huge "'number' must be an integer from 1 to 1000" '0,/\[-1, 3, C3/s//[-1, 99999999999, C3/'
my cfg_upsample_zero "the scale must be from 1 to 16" "0,/'nearest'\]/s/None, 2, 'nearest'/None, 0, 'nearest'/"
my cfg_anchor_nan "anchor nan must be from 0 to 65536" '0,/10,13/s//.nan,13/'
my cfg_nc_huge "nc must be from 1 to 100000" 's/^nc: .*/nc: 2000000000/'
my cfg_malformed "malformed yaml" 's/^backbone:/backbone: [/'

# ---- hyperparameter yamls
printf 'lr0: [0.01\n' > hyp_malformed.yaml
expect hyp_malformed err "hyp_malformed.yaml" -- "$build/y5train" --data base/data.yaml --cfg "$cfg" --hyp hyp_malformed.yaml "${small[@]}" --epochs 1
sed 's/^lr0: .*/lr0: fast/' "$hyp" > hyp_text.yaml
expect hyp_text err "hyp_text.yaml" -- "$build/y5train" --data base/data.yaml --cfg "$cfg" --hyp hyp_text.yaml "${small[@]}" --epochs 1
sed 's/^lr0: .*/lr0: .nan/' "$hyp" > hyp_nan.yaml
expect hyp_nan err "hyp_nan.yaml: line [0-9]+: 'lr0' is nan" -- "$build/y5train" --data base/data.yaml --cfg "$cfg" --hyp hyp_nan.yaml "${small[@]}" --epochs 1
sed 's/^momentum: .*/momentum: -0.9/' "$hyp" > hyp_negative.yaml
expect hyp_negative err "hyp_negative.yaml: line [0-9]+: 'momentum' is -0.9" -- "$build/y5train" --data base/data.yaml --cfg "$cfg" --hyp hyp_negative.yaml "${small[@]}" --epochs 1

# ---- a first real run, for the weights, flags and resume cases
expect train_ok ok "1 epochs completed" -- "$build/y5train" --data base/data.yaml --cfg "$cfg" --hyp "$hyp" "${small[@]}" --epochs 1 --name ok
best=runs/train/ok/weights/best.safetensors

# ---- weights files
: > w_empty.safetensors
expect w_empty err "w_empty.safetensors" -- "$build/y5val" --data base/data.yaml --weights w_empty.safetensors --imgsz 64
head -c 5000 /dev/urandom > w_garbage.pt
expect w_garbage err "w_garbage.pt" -- "$build/y5detect" --source $good --weights w_garbage.pt --imgsz 64 --nosave
head -c 20000 $best > w_truncated.safetensors
expect w_truncated err "w_truncated.safetensors" -- "$build/y5val" --data base/data.yaml --weights w_truncated.safetensors --imgsz 64
python3 -c "import struct,sys; sys.stdout.buffer.write(struct.pack('<Q', 1 << 62) + b'{}')" > w_header_huge.safetensors
expect w_header_huge err "w_header_huge.safetensors" -- "$build/y5val" --data base/data.yaml --weights w_header_huge.safetensors --imgsz 64
# y5detect skips an image past OpenCV's pixel limit as unreadable (detect.py: cv2.error ends the run).
expect detect_bomb ok "x.png: cannot read the image, skipped" -- \
  "$build/y5detect" --source img_bomb_png_opencv/images/train/x.png --weights $best --imgsz 64 --nosave
echo "just text" > w_text.pt
expect w_text err "w_text.pt" -- "$build/y5train" --data base/data.yaml --weights w_text.pt "${small[@]}" --epochs 1

# ---- flags: YOLOv5's meaning, numbers range-checked, every refusal one line with exit 2
expect flag_imgsz_round ok "WARNING: --img-size 50 must be multiple of max stride 32, updating to 64" -- \
  "$build/y5val" --data base/data.yaml --weights $best --imgsz 50
expect flag_imgsz_huge err "--imgsz 1000000: the image size must be from 1 to 65536" -- \
  "$build/y5detect" --source $good --weights $best --imgsz 1000000 --nosave
expect flag_imgsz_zero err "--imgsz" -- "$build/y5train" --data base/data.yaml --cfg "$cfg" --imgsz 0
expect flag_batch_zero err "--batch-size" -- "$build/y5train" --data base/data.yaml --cfg "$cfg" --batch-size 0
expect flag_epochs_text err "--epochs" -- "$build/y5train" --data base/data.yaml --cfg "$cfg" --epochs many
expect flag_epochs_overflow err "--epochs" -- "$build/y5train" --data base/data.yaml --cfg "$cfg" --epochs 99999999999
expect flag_unknown err "--frobnicate" -- "$build/y5val" --data base/data.yaml --weights $best --frobnicate
expect flag_conf err "--conf-thres 2: valid values are between 0.0 and 1.0" -- \
  "$build/y5detect" --source $good --weights $best --conf-thres 2 --nosave
expect flag_iou err "--iou-thres -1: valid values are between 0.0 and 1.0" -- \
  "$build/y5val" --data base/data.yaml --weights $best --iou-thres -1
expect flag_workers_huge ok "1 epochs completed" -- \
  "$build/y5train" --data base/data.yaml --cfg "$cfg" --hyp "$hyp" "${small[@]}" --epochs 1 --workers 100000 --name workers
grep -q "^workers: [1-4]$" runs/train/workers/opt.yaml || { echo "FAIL flag_workers_huge: --workers not capped"; failed=$((failed + 1)); }
expect flag_device err "device" -- "$build/y5val" --data base/data.yaml --weights $best --device 99
expect flag_label_smoothing err "--label-smoothing 2: must be in \[0, 1\)" -- \
  "$build/y5train" --data base/data.yaml --cfg "$cfg" "${small[@]}" --epochs 1 --label-smoothing 2
# --patience 0 disables early stopping (train.py's EarlyStopping: patience or inf), it does not stop at once.
expect flag_patience_zero ok "2 epochs completed" -- "$build/y5train" --data base/data.yaml --cfg "$cfg" --hyp "$hyp" \
  --imgsz 64 --epochs 2 --batch-size 4 --workers 1 --noplots --noautoanchor --noval --patience 0 --name patience
[ "$(wc -l < runs/train/patience/results.csv)" -eq 3 ] || { echo "FAIL flag_patience_zero: stopped early"; failed=$((failed + 1)); }

# ---- resume
# Killed between the last epoch's checkpoint and the final strip/validation: --resume finishes it, as train.py.
Y5_STOP_AFTER_EPOCH=0 "$build/y5train" --data base/data.yaml --cfg "$cfg" --hyp "$hyp" "${small[@]}" --epochs 1 --name lastkill > /dev/null
expect resume_after_last_epoch ok "Optimizer stripped from runs/train/lastkill/weights/last.safetensors" -- \
  "$build/y5train" --resume runs/train/lastkill/weights/last.safetensors
grep -q "^0 epochs completed" resume_after_last_epoch.out || { echo "FAIL resume_after_last_epoch: epoch count"; failed=$((failed + 1)); }
expect resume_finished err "nothing to resume" -- "$build/y5train" --resume runs/train/lastkill/weights/last.safetensors
# A checkpoint copied to another folder resumes into its run's recorded save_dir, not the copy's parent.
Y5_STOP_AFTER_EPOCH=0 "$build/y5train" --data base/data.yaml --cfg "$cfg" --hyp "$hyp" "${small[@]}" --epochs 2 --name moved > /dev/null
mkdir -p elsewhere/sub/weights; cp runs/train/moved/weights/last.safetensors elsewhere/sub/weights/
expect resume_copied ok "Results saved to runs/train/moved" -- "$build/y5train" --resume elsewhere/sub/weights/last.safetensors
[ ! -e elsewhere/sub/results.csv ] && [ "$(wc -l < runs/train/moved/results.csv)" -eq 3 ] ||
  { echo "FAIL resume_copied: wrote into the copy's folder"; failed=$((failed + 1)); }
# Names and paths that need quoting in YAML round-trip through the stored options.
odd="we:ird #name 'q\" [x]"
Y5_STOP_AFTER_EPOCH=0 "$build/y5train" --data base/data.yaml --cfg "$cfg" --hyp "$hyp" "${small[@]}" --epochs 2 --name "$odd" > /dev/null
expect resume_odd_name ok "Results saved to runs/train/we:ird #name" -- "$build/y5train" --resume "runs/train/$odd/weights/last.safetensors"
[ "$(ls runs/train | grep -c '^we:ird')" -eq 1 ] && [ "$(wc -l < "runs/train/$odd/results.csv")" -eq 3 ] ||
  { echo "FAIL resume_odd_name: the stored name did not round-trip"; failed=$((failed + 1)); }
head -c 3000 /dev/urandom > garbage.safetensors
expect resume_garbage err "garbage.safetensors" -- "$build/y5train" --resume garbage.safetensors
expect resume_missing err "nowhere.safetensors" -- "$build/y5train" --resume nowhere.safetensors
echo "not a checkpoint" > text.safetensors
expect resume_text err "text.safetensors" -- "$build/y5train" --resume text.safetensors
mkdir -p empty_cwd && expect resume_latest_none err "no runs/train/\*/weights/last.safetensors" -- \
  bash -c "cd empty_cwd && '$build/y5train' --resume"

# ---- checkpoints (written by a background thread): a write that fails ends the run with the file named
mkdir -p runs/train/ckpt_blocked/weights/last.safetensors.tmp/x  # a folder where the temporary file goes
expect ckpt_blocked err "last.safetensors.tmp: cannot open for writing" -- "$build/y5train" --data base/data.yaml \
  --cfg "$cfg" --hyp "$hyp" "${small[@]}" --epochs 2 --name ckpt_blocked --exist-ok
[ "$(wc -l < runs/train/ckpt_blocked/results.csv)" -le 3 ] && [ ! -e runs/train/ckpt_blocked/weights/last.safetensors ] ||
  { echo "FAIL ckpt_blocked: training went on past the failed write, or a checkpoint appeared"; failed=$((failed + 1)); }

echo "hostile: $cases cases, $failed failed, $skipped skipped (root reads any file)"
[ "$failed" -eq 0 ] && [ "$cases" -ge 60 ]

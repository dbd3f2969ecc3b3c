"""Packs a CUDA build of y5 with the shared libraries it loads into one folder, for a GPU machine that has the NVIDIA
driver and cuDNN 9 / cuBLAS 13 somewhere (a CUDA image, PyTorch's pip wheels) but none of y5's build dependencies
(OpenCV, yaml-cpp, oneDNN, OpenBLAS, plplot, ...) and no network to install them.

  python3 tools/gpu_bundle.py BUILD_DIR OUT_DIR

OUT_DIR/build: the programs; OUT_DIR/lib: every library they load except glibc's (the machine's must be this one's
or newer), the driver's (libcuda, libnvidia-*), cuDNN's and cuBLAS's (about 1.5 GB; OUT_DIR/env.sh finds the
machine's own), plplot's cairo driver and data for the plots. Libraries that y5 reaches only through OpenCV's optional
backends (GDAL, GDCM, OpenEXR, GStreamer, FFmpeg, LAPACK, OpenCL, ...), libcurl (downloads) and oneDNN (the CPU
convolutions: env.sh sets Y5_CONV=ref, the im2col + OpenBLAS reference) are replaced by stubs: the same soname and
symbols, functions that abort naming the library. So a bundle is about 20 MB as .tar.xz instead of 350 MB, and reading
JPEG/PNG, training, validating and detecting on images work; videos, TIFF and EXR images and downloads do not.
There: `source OUT_DIR/env.sh`, then run the programs, or
`Y5_PREBUILT=1 Y5_BUILD_DIR=OUT_DIR/build bash tools/gpu_check.sh`.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

PROGRAMS = ['y5train', 'y5val', 'y5detect', 'y5data', 'y5_tests_gpu', 'bench_step', 'bench_kernels']
SYSTEM = re.compile(r'^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|libresolv|libutil|'
                    r'libcuda\.so|libnvidia|libcudnn|libcublas)')
STUB = re.compile(r'^(libgdal|libgdcm|libtiff|libdc1394|libgst|libav|libswscale|libswresample|libgphoto2|'
                  r'libcurl|libOpenCL|liblapack|libdnnl|libcrypto)')
# Stub functions that OpenCV calls whether or not the backend is used (the GDAL decoder's constructor): these return.
NOOP = {'GDALAllRegister'}


def run(*args):
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def needed(path):
    return re.findall(r'\(NEEDED\)\s+Shared library: \[(.*)\]', run('readelf', '-d', path))


def make_stub(real, out_dir):
    """A library with real's soname and defined symbols (versions kept): functions abort, data are zeroed bytes."""
    soname = re.search(r'\(SONAME\)\s+Library soname: \[(.*)\]', run('readelf', '-d', real)).group(1)
    syms = {}  # name -> (is_function, size, version); a name defined at several versions keeps the default one
    for line in run('objdump', '-T', real).splitlines():
        m = re.match(r'^[0-9a-f]+\s+(.{7})\s+(\S+)\s+([0-9a-f]+)\s+(\(?)(\S+?)\)?\s+(\S+)$', line)
        if not m or m.group(2) in ('*UND*', '*ABS*'):
            continue
        flags, size, hidden, ver, name = m.group(1), int(m.group(3), 16), m.group(4), m.group(5), m.group(6)
        if not re.match(r'^[A-Za-z_][A-Za-z0-9_]*$', name) or name in ('_init', '_fini'):
            continue
        if name in syms and hidden:
            continue
        syms[name] = ('F' in flags or 'i' in flags, size, '' if ver == 'Base' else ver)
    with tempfile.TemporaryDirectory() as tmp:
        c, vs = os.path.join(tmp, 'stub.c'), os.path.join(tmp, 'stub.map')
        with open(c, 'w') as f:
            f.write('#include <stdio.h>\n#include <stdlib.h>\n'
                    'static void y5_stub(const char* s) { fprintf(stderr, "y5 bundle: %s called, but ' + soname +
                    ' is a stub (left out of the bundle)\\n", s); abort(); }\n')
            for n, (fn, size, _) in sorted(syms.items()):
                body = '' if n in NOOP else f'y5_stub("{n}");'
                f.write(f'void {n}(void) {{ {body} }}\n' if fn else
                        f'__attribute__((aligned(16))) char {n}[{max(size, 1)}];\n')
        versions = sorted({v for _, _, v in syms.values() if v})
        with open(vs, 'w') as f:
            for v in versions:
                f.write(f'{v} {{ global: {"; ".join(n for n, s in sorted(syms.items()) if s[2] == v)}; }};\n')
        args = ['cc', '-shared', '-fPIC', '-O0', '-w', '-o', os.path.join(out_dir, soname), c, f'-Wl,-soname,{soname}']
        subprocess.run(args + ([f'-Wl,--version-script={vs}'] if versions else []), check=True)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    build, out = sys.argv[1], sys.argv[2]
    if not os.access(os.path.join(build, 'y5_tests_gpu'), os.X_OK):
        sys.exit(f'{build}/y5_tests_gpu not found: build with -DY5_CUDA=ON first')
    shutil.rmtree(out, ignore_errors=True)
    for d in ('build', 'lib', 'lib/plplot-drivers', 'lib/plplot-data'):
        os.makedirs(os.path.join(out, d))
    # Where the loader would find each library here: ldconfig's cache, then the CUDA toolkit's folders.
    where = {}
    for d in glob.glob('/usr/local/cuda*/lib*'):
        for f in glob.glob(os.path.join(d, '*.so*')):
            where.setdefault(os.path.basename(f), f)
    for line in run('ldconfig', '-p').splitlines():
        m = re.match(r'^\s+(\S+) \(libc6,x86-64.*\) => (\S+)$', line)
        if m:
            where[m.group(1)] = m.group(2)
    roots = []
    for p in PROGRAMS:
        src = os.path.join(build, p)
        if os.access(src, os.X_OK):
            shutil.copy2(src, os.path.join(out, 'build'))
            roots.append(src)
    # plplot opens its output drivers with dlopen (no NEEDED entry): carry the cairo one and plplot's data files.
    for drv in glob.glob('/usr/lib/x86_64-linux-gnu/plplot*/drivers/cairo.*'):
        shutil.copy2(drv, os.path.join(out, 'lib/plplot-drivers'))
        if drv.endswith('.so'):
            roots.append(drv)
    for data in glob.glob('/usr/share/plplot*/*.fnt') + glob.glob('/usr/share/plplot*/*.pal'):
        shutil.copy2(data, os.path.join(out, 'lib/plplot-data'))
    seen, todo, stubs, copied = set(), [n for r in roots for n in needed(r)], [], []
    while todo:
        name = todo.pop()
        if name in seen or SYSTEM.match(name):
            continue
        seen.add(name)
        if name not in where:
            sys.exit(f'{name}: not found on this machine')
        if STUB.match(name):
            make_stub(where[name], os.path.join(out, 'lib'))
            stubs.append(name)
            continue
        shutil.copy2(where[name], os.path.join(out, 'lib', name))
        copied.append(name)
        todo += needed(where[name])
    subprocess.run(['strip', '--strip-unneeded'] + glob.glob(os.path.join(out, 'build', '*')) +
                   [os.path.join(out, 'lib', n) for n in copied], check=False)
    with open(os.path.join(out, 'env.sh'), 'w') as f:
        f.write('''# source this: the bundle's libraries, then the machine's cuDNN 9 and cuBLAS 13 (CUDA toolkit or pip wheels)
_b="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_p="$_b/lib"
for _n in libcudnn.so.9 libcublas.so.13 libcublasLt.so.13; do
  _f=$(find /usr/local /usr/lib /opt -name "$_n" 2>/dev/null | head -1)
  if [ -n "$_f" ]; then _p="$_p:$(dirname "$_f")"; else echo "env.sh: $_n not found on this machine" >&2; fi
done
export LD_LIBRARY_PATH="$_p${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PLPLOT_DRV_DIR="$_b/lib/plplot-drivers" PLPLOT_LIB="$_b/lib/plplot-data"
export Y5_CONV=ref  # libdnnl is a stub: the CPU convolutions take the im2col + OpenBLAS reference
unset _b _p _n _f
''')
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out) for f in fs)
    print(f'{out}: {len(roots)} programs, {len(copied)} libraries, {len(stubs)} stubs ({", ".join(sorted(stubs))}), '
          f'{size / 2**20:.1f} MiB')


if __name__ == '__main__':
    main()

#!/usr/bin/env bash
# Installs what y5 needs to build on Debian (12 or newer), skipping what is already there:
# a C++17 compiler, CMake, OpenBLAS, OpenCV, yaml-cpp, Catch2, nlohmann-json, CLI11, libzip (PyTorch .pt
# checkpoints), libcurl (a data yaml's download:), ONNX and protobuf (y5export), PLplot with its cairo driver (the
# figures), Boost.Context (the fibers of the emulated CUDA device, tests/cudaemu), and clang with its libFuzzer
# and sanitizer runtimes (fuzz/, tools/fuzz.sh). The CUDA toolkit and cuDNN are not
# Debian packages here: when nvcc is on PATH (or in /usr/local/cuda/bin) the CUDA backend is built
# too, otherwise y5 builds CPU-only.
set -euo pipefail

pkgs=(build-essential cmake pkg-config libopenblas-dev libopencv-dev libjpeg-dev libyaml-cpp-dev catch2 nlohmann-json3-dev libcli11-dev libboost-context-dev libzip-dev libcurl4-openssl-dev libonnx-dev libprotobuf-dev libdnnl-dev libplplot-dev plplot-driver-cairo clang)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
if ((${#missing[@]})); then
  echo "y5 setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "y5 setup: all Debian packages present"
fi
# libFuzzer and the sanitizer runtimes are only recommended by clang-N: libclang-rt-N-dev for the clang installed.
if [ "$(clang -print-file-name=libclang_rt.fuzzer-x86_64.a)" = libclang_rt.fuzzer-x86_64.a ]; then
  rt="libclang-rt-$(clang -dumpversion | cut -d. -f1)-dev"
  echo "y5 setup: installing $rt (libFuzzer)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$rt" >/dev/null
fi

if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "y5 setup: CUDA toolkit found; the CUDA backend will be built"
else
  echo "y5 setup: no CUDA toolkit; building the CPU engine only"
fi

# Sourced by the scripts/gpu_*.sh that run on the device machine, whose image has torch but
# not dvc or pytest: those come as wheels in ./.whl (see the project's notes on the GPU machine).

# Install .whl into /tmp/site unless MODULE already imports: once per machine, since a second
# install into the same target prints a warning per package, enough to push an earlier
# command's results out of a device call's output tail.
install_wheels() {
  python3 -c "import $1" 2>/dev/null ||
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
}

# Byte-compile site-packages and /tmp/site, as a pip install would have: the image ships its
# packages without bytecode and sets PYTHONDONTWRITEBYTECODE=1, so every process compiles
# torch's Python source afresh (eleventh session: a train stage that loads its step took 20 s
# without, 9.5 s with; BENCHMARKS.md).
byte_compile_site() {
  python3 -m compileall -q -j 0 \
    "$(python3 -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" /tmp/site
}

# byte_compile_site once per machine, where the image ships without bytecode: machine set-up,
# to be kept out of any timed run (the marker outlives the calling script, not the machine)
byte_compile_site_once() {
  if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ] && [ ! -f /tmp/bytecode.done ]; then
    local b0=$SECONDS
    byte_compile_site > /dev/null 2>&1
    echo "byte-compiled site-packages and /tmp/site in $((SECONDS - b0)) s (machine set-up, outside any timing)"
    touch /tmp/bytecode.done
  fi
}

#!/bin/sh
# Install radbridge from this offline bundle, on a server without a package index or
# network access: a virtual environment PREFIX/venv holding radbridge and every wheel it
# needs (from wheels/), for CPython 3.11 on x86_64 Linux (glibc 2.28 or newer).
#
#   sudo ./install.sh [--prefix DIR] [--python PYTHON] [--no-compile]
#
#   --prefix DIR     where to install (default /opt/radbridge): DIR/venv/bin/radbridge
#   --python PYTHON  the Python 3.11 to build the environment with (default python3.11,
#                    else python3)
#   --no-compile     skip writing .pyc files (a faster install; every start then
#                    compiles what it imports, as the service may not write them)
#
# Run it again with a newer bundle to upgrade in place. Then, for a service:
#   sudo DIR/venv/bin/radbridge install-service --prefix DIR
set -eu
umask 022 # the service's user reads what is installed here
unset PYTHONPATH PYTHONHOME # only the new environment's own packages count

prefix=/opt/radbridge
python=
compile=
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) prefix=${2:?--prefix needs a folder}; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --python) python=${2:?--python needs a Python 3.11}; shift 2 ;;
        --python=*) python=${1#*=}; shift ;;
        --no-compile) compile=--no-compile; shift ;;
        -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument '$1'; valid: --prefix DIR, --python PYTHON, --no-compile" >&2; exit 2 ;;
    esac
done
case $prefix in
    /*) ;;
    *) echo "install.sh: --prefix must be an absolute path, not '$prefix'" >&2; exit 2 ;;
esac
if [ -z "$python" ]; then
    python=$(command -v python3.11 || command -v python3 || true)
fi
if [ -z "$python" ] || ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    echo "install.sh: needs CPython 3.11 (the bundle's wheels are built for it); found: ${python:-none}" >&2
    echo "  give one with --python /path/to/python3.11" >&2
    exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)
pip=$(ls "$here"/wheels/pip-*.whl | tail -n 1)

# The service's environment holds radbridge and what it runs on, not pip: the bundle's
# pip wheel installs into it (and upgrades it, run again with a newer bundle).
if [ ! -x "$prefix/venv/bin/python" ]; then
    "$python" -m venv --without-pip "$prefix/venv"
fi
# Only the bundle's wheels: no index, and neither pip's configuration files nor its
# environment variables (--isolated) on this machine.
PIP_CONFIG_FILE=/dev/null "$prefix/venv/bin/python" "$pip/pip" --isolated install --quiet \
    --disable-pip-version-check --no-index --find-links "$here/wheels" $compile \
    --upgrade radbridge
"$prefix/venv/bin/radbridge" --version
echo "installed in $prefix/venv; as a service: $prefix/venv/bin/radbridge install-service --prefix $prefix"

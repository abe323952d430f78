#!/bin/sh
# make dist: radbridge's wheel and sdist, and the offline bundle, in OUT (default dist):
#
#   OUT/radbridge-VERSION-py3-none-any.whl, OUT/radbridge-VERSION.tar.gz and
#   OUT/radbridge-VERSION-offline.tar.gz: radbridge-VERSION-offline/ holding wheels/ (every
#   wheel radbridge needs at run time, none of the test tools, for CPython 3.11 on x86_64
#   Linux with glibc 2.28+, and pip's wheel to install them), examples/hospital.yaml and
#   install.sh (deploy/install.sh).
#
# The dependency wheels are kept in WHEELHOUSE (default ~/.cache/radbridge/wheelhouse, under
# XDG_CACHE_HOME when set): a later build, from this checkout or a fresh clone, takes them
# from there without the package index, and asks the index only when something is missing
# (rm -r the folder to take the newest releases again). PYTHON (default .venv/bin/python)
# needs pip and build.
set -eu

out=${1:-dist}
python=${PYTHON:-.venv/bin/python}
cache=${WHEELHOUSE:-${XDG_CACHE_HOME:-${HOME:-.}/.cache}/radbridge/wheelhouse}
# glibc 2.28 and every older manylinux tag (pip does not widen --platform by itself)
target="--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311"
for glibc in 28 27 26 25 24 23 22 21 20 19 18 17; do
    target="$target --platform manylinux_2_${glibc}_x86_64"
done
target="$target --platform manylinux2014_x86_64"

mkdir -p "$out" "$cache"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# From a copy of the checkout without what git ignores (virtual environments, var/,
# caches), so that the build writes nothing into the checkout; in PYTHON's
# environment when it has the build requirements (make venv installs them), else in an
# isolated one (slower: it installs them first).
src=.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    src=$stage/src
    mkdir "$src"
    git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -cf - -T - 2>/dev/null | tar -C "$src" -xf -
fi
"$python" -m build --no-isolation --outdir "$stage" "$src" >"$stage/build.log" 2>&1 ||
    "$python" -m build --outdir "$stage" "$src" >"$stage/build.log" 2>&1 ||
    { cat "$stage/build.log" >&2; exit 1; }
wheel=$(ls "$stage"/radbridge-*.whl)
version=$(basename "$wheel" | cut -d- -f2)
bundle=$stage/radbridge-$version-offline
mkdir -p "$bundle/wheels" "$bundle/examples"

# shellcheck disable=SC2086  # $target is a list of options
if ! "$python" -m pip download --quiet --no-index --find-links "$cache" $target \
    --dest "$bundle/wheels" "$wheel" pip 2>/dev/null; then
    rm -f "$bundle/wheels/"*
    "$python" -m pip download --quiet --find-links "$cache" $target --dest "$bundle/wheels" "$wheel" pip
fi
for file in "$bundle/wheels/"*.whl; do
    case $(basename "$file") in
        radbridge-*) ;;
        # a copy appears whole (another build may be reading the folder)
        *) name=$(basename "$file")
           [ -e "$cache/$name" ] || { cp "$file" "$cache/.$name.part" && mv "$cache/.$name.part" "$cache/$name"; } ;;
    esac
done
cp examples/hospital.yaml "$bundle/examples/"
cp deploy/install.sh "$bundle/"
# gzip -1: wheels are compressed already
tar -C "$stage" -cf - "radbridge-$version-offline" | gzip -1 >"$stage/radbridge-$version-offline.tar.gz"
mv "$wheel" "$stage/radbridge-$version.tar.gz" "$stage/radbridge-$version-offline.tar.gz" "$out/"
echo "$out/radbridge-$version-offline.tar.gz: $(ls "$bundle/wheels" | wc -l) wheels"

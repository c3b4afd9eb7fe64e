#!/usr/bin/env bash
# Runs Go fuzz targets for a given -fuzztime each:
#   FUZZ_JOBS=N hack/fuzz.sh <fuzztime> <package>:<Target>...
# FUZZ_JOBS targets run at once (default 1, one after another, output as it
# comes; with more, each target's output is printed when it ends, and each
# target has one fuzzing worker).
#
# Go 1.26's coordinator sometimes fails a target at the end of a duration
# -fuzztime with a bare "context deadline exceeded" (golang/go#75804, a
# race on its own deadline under CPU contention, fixed in Go 1.27). Such a
# run wrote no failing input and printed nothing of the target's; it counts
# as passed once the target's corpus passes as a plain test. Anything else
# that fails (a crasher, a panic, a failed check) fails the run.
set -uo pipefail
GO=${GO:-go}
jobs=${FUZZ_JOBS:-1}
fuzztime=$1
shift

# fuzz_one runs one target, its output to stdout; its status is the run's.
fuzz_one() {
	local pkg=${1%%:*} name=${1#*:} flags=()
	local corpus=$pkg/testdata/fuzz/$name log rc before
	before=$(ls "$corpus" 2>/dev/null)
	[ "$jobs" -gt 1 ] && flags=(-parallel 1)
	echo "fuzz $name in $pkg for $fuzztime"
	log=$(mktemp)
	"$GO" test -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" "${flags[@]}" "$pkg" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	if [ "$rc" -ne 0 ] && [ "$(ls "$corpus" 2>/dev/null)" = "$before" ] &&
		grep -qx '    context deadline exceeded' "$log" &&
		! grep -qE 'Failing input written|^panic:|_test\.go:[0-9]+:|fuzzing process hung' "$log"; then
		echo "fuzz $name: the coordinator's own deadline (golang/go#75804), no failing input; replaying the corpus"
		"$GO" test -count=1 -run "^$name\$" "$pkg"
		rc=$?
	fi
	rm -f "$log"
	return "$rc"
}

if [ "$jobs" -le 1 ]; then
	for t in "$@"; do
		fuzz_one "$t" || exit 1
	done
	exit 0
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=0
reap() {
	wait -n || failed=1
}
for t in "$@"; do
	while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do reap; done
	(
		fuzz_one "$t" >"$logs/${t#*:}" 2>&1
		rc=$?
		grep -v '^fuzz: elapsed' "$logs/${t#*:}"
		echo "fuzz ${t#*:}: $([ "$rc" -eq 0 ] && echo passed || echo FAILED)"
		exit "$rc"
	) &
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do reap; done
exit "$failed"

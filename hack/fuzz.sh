#!/usr/bin/env bash
# Runs Go fuzz targets one after another for a given -fuzztime each:
#   hack/fuzz.sh <fuzztime> <package>:<Target>...
# Go 1.26's coordinator sometimes fails a target at the end of a duration
# -fuzztime with a bare "context deadline exceeded" (golang/go#75804, a
# race on its own deadline under CPU contention, fixed in Go 1.27). Such a
# run wrote no failing input and printed nothing of the target's; it counts
# as passed once the target's corpus passes as a plain test. Anything else
# that fails (a crasher, a panic, a failed check) fails the run.
set -uo pipefail
GO=${GO:-go}
fuzztime=$1
shift
for t in "$@"; do
	pkg=${t%%:*} name=${t#*:}
	corpus=$pkg/testdata/fuzz/$name
	before=$(ls "$corpus" 2>/dev/null)
	echo "fuzz $name in $pkg for $fuzztime"
	log=$(mktemp)
	"$GO" test -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" "$pkg" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	if [ "$rc" -ne 0 ]; then
		if [ "$(ls "$corpus" 2>/dev/null)" = "$before" ] && grep -qx '    context deadline exceeded' "$log" &&
			! grep -qE 'Failing input written|^panic:|_test\.go:[0-9]+:|fuzzing process hung' "$log"; then
			echo "fuzz $name: the coordinator's own deadline (golang/go#75804), no failing input; replaying the corpus"
			"$GO" test -count=1 -run "^$name\$" "$pkg" || { rm -f "$log"; exit 1; }
		else
			rm -f "$log"
			exit "$rc"
		fi
	fi
	rm -f "$log"
done

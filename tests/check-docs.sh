#!/bin/bash
# check-docs.sh: fails when an option in src/config_options.c's table is missing from
# man/pgmux.ini.5 or etc/pgmux.ini; a grep-level check that needs no build.
# tests/unit/test_config.c also checks each entry's type, default and text.
set -euo pipefail

top_srcdir=${TOP_SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}
table=$top_srcdir/src/config_options.c
man_page=$top_srcdir/man/pgmux.ini.5
example=$top_srcdir/etc/pgmux.ini

for file in "$table" "$man_page" "$example"; do
	if [[ ! -r $file ]]; then
		echo "check-docs: cannot read $file" >&2
		exit 2
	fi
done

# Table rows start with: { .section = "pool", .name = "pool_mode", ...
mapfile -t rows < <(sed -n 's/^[[:space:]]*{ \.section = "\([a-z]*\)", \.name = "\([a-z_]*\)".*/\1 \2/p' "$table")
if (( ${#rows[@]} == 0 )); then
	echo "check-docs: found no options in $table; has the table's layout changed?" >&2
	exit 2
fi

missing=0
for row in "${rows[@]}"; do
	section=${row% *}
	name=${row#* }
	if ! grep -qx "\.B $name" "$man_page"; then
		echo "check-docs: [$section] $name is not documented in man/pgmux.ini.5 (no '.B $name' line)" >&2
		missing=$((missing + 1))
	fi
	# The option must appear, set or commented out, below its own section header.
	if ! awk -v want="[$section]" -v name="$name" '
		/^\[/ { section = $0 }
		section == want && ($0 ~ "^" name " =" || $0 ~ "^; " name " =") { found = 1 }
		END { exit found ? 0 : 1 }' "$example"; then
		echo "check-docs: [$section] $name is missing from etc/pgmux.ini" >&2
		missing=$((missing + 1))
	fi
done

if (( missing > 0 )); then
	echo "check-docs: $missing problem(s) in ${#rows[@]} options" >&2
	exit 1
fi
echo "check-docs: all ${#rows[@]} options documented in man/pgmux.ini.5 and etc/pgmux.ini"

# --- layer-common.sh: what both variants of the init's layer code share -------------------
# The format and the rules are docs/FORMAT.md. The build emits this file, then ONE of
# layer-native.sh (the initramfs carries mkma-unpack) or layer-busybox.sh (it could not be
# built: busybox cpio, sandboxed), never both: init/generate.ts decides, not the boot.
# Generated constants (lib/contract.ts): FOOTER_TAG, FOOTER_SIZE, XATTR_SECTION, LAYER_*,
# FMT_*, UNPACK_* (mkma-unpack's protocol words) and UNPACK_EXIT_* (its exit statuses).
# busybox ash: `local` is supported.
# shellcheck disable=SC3043

is_number() {
	case $1 in
	'' | *[!0-9]*) return 1 ;;
	esac
	return 0
}

# decode ESCAPED: sets DECODED to the raw path (\0ooo escapes, see escapePath in
# format/manifest.ts). A variable, not output: $(...) would strip a trailing newline.
decode() {
	DECODED=$(printf '%bx' "$1")
	DECODED=${DECODED%x}
}

# safe_rel PATH: a relative path that stays inside the tree (no /…, no . or .. components).
safe_rel() {
	case /$1/ in
	// | *//* | */./* | */../*) return 1 ;;
	esac
	return 0
}

# parents_are_dirs ROOT REL: true when every parent of REL under ROOT is a real directory.
# A path under a symlink does not exist in the layer's view; following it would reach
# something else.
parents_are_dirs() {
	_p=$1
	_rest=$2
	while :; do
		case $_rest in
		*/*) ;;
		*) return 0 ;;
		esac
		_p="$_p/${_rest%%/*}"
		_rest=${_rest#*/}
		if [ -L "$_p" ] || [ ! -d "$_p" ]; then
			return 1
		fi
	done
}

layer_applied() {
	phase layer-applied "$1 ($2 entries, $3 removed)"
	M_APPLIED=$((M_APPLIED + 1))
}

# Loud: on the console and in the kernel log, so that it is noticed after boot.
layer_skipped() {
	log "LAYER SKIPPED $1: $2"
	M_SKIPPED=$((M_SKIPPED + 1))
}

# sort_layers DIR: layer file names in natural order (format/names.ts: naturalKey), one per
# line. Names outside the layer pattern are not layers, and neither is anything but a
# regular file (a FIFO would block whoever opens it): both are reported, not applied. A layer
# superseded by a compacted one (format/compacted.ts: its range within the compacted layer's
# LAST+from+FIRST) is reported and left out.
sort_layers() {
	# no layers (a fresh machine): no awk/sort/cut processes
	set -- "$1" "$1"/"$LAYER_PREFIX"*"$LAYER_SUFFIX"
	[ -e "$2" ] || [ -L "$2" ] || return 0
	for _f in "$1"/"$LAYER_PREFIX"*"$LAYER_SUFFIX"; do
		_n=${_f##*/}
		_id=${_n#"$LAYER_PREFIX"}
		_id=${_id%"$LAYER_SUFFIX"}
		case $_id in
		[0-9A-Za-z]*) ;;
		*)
			warn "ignoring $_n: not a layer name" >&2
			continue
			;;
		esac
		case $_id in
		*[!0-9A-Za-z._+-]*)
			warn "ignoring $_n: not a layer name" >&2
			continue
			;;
		esac
		if [ ! -f "$_f" ]; then
			warn "ignoring $_n: not a regular file" >&2
			continue
		fi
		printf '%s\n' "$_n"
	done | awk '
	function nkey(s,   key, d) {
		key = ""
		while (match(s, /[0-9]+/)) {
			d = substr(s, RSTART, RLENGTH); sub(/^0+/, "", d); if (d == "") d = "0"
			while (length(d) < 20) d = "0" d
			key = key substr(s, 1, RSTART - 1) d; s = substr(s, RSTART + RLENGTH)
		}
		return key s
	}
	{
		id = substr($0, length(P) + 1); id = substr(id, 1, length(id) - length(S))
		lo = id; hi = id; c = 0; at = index(id, M)
		if (at > 1 && at + length(M) <= length(id)) {
			rest = substr(id, at + length(M))
			if (index(rest, M) == 0) { hi = substr(id, 1, at - 1); lo = rest; c = 1 }
		}
		print nkey(id) "\t" nkey(lo) "\t" nkey(hi) "\t" c "\t" $0
	}' P="$LAYER_PREFIX" S="$LAYER_SUFFIX" M="$COMPACT_MARK" | sort | awk -F '\t' '
	{ n++; lo[n] = $2 ""; hi[n] = $3 ""; c[n] = $4; name[n] = $5 }
	END {
		for (i = 1; i <= n; i++) {
			s = 0
			for (j = 1; j <= n && !s; j++)
				if (j != i && c[j] == 1 && (lo[j] "") <= (lo[i] "") && (hi[i] "") <= (hi[j] "")) s = j
			if (s) print "\t" name[i] "\t" name[s]; else print name[i]
		}
	}' | while IFS= read -r _l; do
		case $_l in
		"	"*)
			_l=${_l#"	"}
			warn "ignoring ${_l%%"	"*}: superseded by ${_l#*"	"} (a compaction was interrupted after its new layer was complete)" >&2
			;;
		*) printf '%s\n' "$_l" ;;
		esac
	done
}

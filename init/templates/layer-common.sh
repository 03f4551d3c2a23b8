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

# image_data_sha256 FILE: prints the data_sha256 of FILE's manifest (nothing when it has none).
# The base's is written to boot.env: `mkma persist` records it in each layer as the base the
# layer was written on (docs/FORMAT.md, base_data_sha256). Only the manifest is read (tail).
image_data_sha256() {
	_f=$(tail -c "$FOOTER_SIZE" "$1" 2>/dev/null) || return 0
	case $_f in "$FOOTER_TAG"*) ;; *) return 0 ;; esac
	_n=${_f#"$FOOTER_TAG"}
	uint "${_n##* }" 9 || return 0
	tail -c $((UINT + FOOTER_SIZE)) "$1" | head -c "$UINT" | sed -n 's/^data_sha256 \([0-9a-f]\{64\}\)$/\1/p' | head -n 1
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
# regular file (a FIFO would block whoever opens it): both are reported, not applied.
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
	done | awk '{
		key = ""; s = substr($0, length(P) + 1); s = substr(s, 1, length(s) - length(S))
		while (match(s, /[0-9]+/)) {
			d = substr(s, RSTART, RLENGTH); sub(/^0+/, "", d); if (d == "") d = "0"
			while (length(d) < 20) d = "0" d
			key = key substr(s, 1, RSTART - 1) d; s = substr(s, RSTART + RLENGTH)
		}
		print key s "\t" $0
	}' P="$LAYER_PREFIX" S="$LAYER_SUFFIX" | sort | cut -f 2
}

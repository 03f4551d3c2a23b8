# --- layer.sh: reading mkma images and applying layers (shell side of format/manifest.ts) ---
# Generated constants (from format/manifest.ts): FOOTER_TAG, FOOTER_SIZE, XATTR_SECTION.
# The rules are written down once, in format/manifest.ts; format/apply.ts is the TypeScript
# side. Both are run against test/fixtures/layers and must give identical trees.
# busybox ash: `local` is supported and needed for the recursive merge.
# shellcheck disable=SC3043

# have_unpacker: the initramfs carries mkma-unpack (init/unpack/mkma-unpack.c) when the
# build host could compile it; without it, busybox cpio and the shell do the work.
have_unpacker() {
	command -v mkma-unpack >/dev/null 2>&1
}

is_number() {
	case $1 in
	'' | *[!0-9]*) return 1 ;;
	esac
	return 0
}

# read_manifest FILE OUT: writes FILE's manifest body to OUT; fails (with $M_ERROR set) when
# the file is truncated or not an mkma image. Sets M_KIND M_ENTRIES M_UNPACKED M_DATA_BYTES.
read_manifest() {
	M_ERROR=''
	if have_unpacker; then
		read_manifest_native "$1"
		return
	fi
	_size=$(stat -c %s "$1" 2>/dev/null) || { M_ERROR="cannot read"; return 1; }
	if [ "$_size" -lt $((FOOTER_SIZE + 8)) ]; then
		M_ERROR="too small ($_size bytes)"
		return 1
	fi
	_footer=$(tail -c "$FOOTER_SIZE" "$1")
	case $_footer in
	"$FOOTER_TAG"*) ;;
	*)
		M_ERROR="no manifest at its end (truncated, or not an mkma image)"
		return 1
		;;
	esac
	_len=${_footer#"$FOOTER_TAG"}
	case $_len in
	*[!0-9\ ]* | *[!\ ]*\ * | '')
		M_ERROR="damaged manifest footer"
		return 1
		;;
	esac
	_len=$((_len + 0))
	if [ "$_len" -le 0 ] || [ "$_len" -gt "$_size" ]; then
		M_ERROR="damaged manifest footer"
		return 1
	fi
	# the skippable frame's header: magic and the length of what follows
	# shellcheck disable=SC2046 # splitting od's output into bytes is intended
	set -- "$1" "$2" $(tail -c $((_len + FOOTER_SIZE + 8)) "$1" | head -c 8 | od -An -tu1)
	if [ "$3 $4 $5 $6" != "$SKIPPABLE_MAGIC_BYTES" ] ||
		[ $(($7 + 256 * $8 + 65536 * $9 + 16777216 * ${10})) -ne $((_len + FOOTER_SIZE)) ]; then
		M_ERROR="damaged manifest frame header"
		return 1
	fi
	tail -c $((_len + FOOTER_SIZE)) "$1" | head -c "$_len" >"$2"
	M_KIND='' M_ENTRIES='' M_UNPACKED='' M_DATA_BYTES=''
	while IFS=' ' read -r _k _v; do
		case $_k in
		kind) M_KIND=$_v ;;
		entries) M_ENTRIES=$_v ;;
		unpacked_bytes) M_UNPACKED=$_v ;;
		data_bytes) M_DATA_BYTES=$_v ;;
		"$XATTR_SECTION") break ;;
		esac
	done <"$2"
	if [ -z "$M_KIND" ] || ! is_number "$M_DATA_BYTES" || ! is_number "$M_UNPACKED" || ! is_number "$M_ENTRIES"; then
		M_ERROR="manifest is incomplete or damaged"
		return 1
	fi
	# The data must end exactly where the manifest frame starts: catches a file cut at a
	# zstd frame boundary, which the zstd checksums alone would not notice.
	if [ $((M_DATA_BYTES + 8 + _len + FOOTER_SIZE)) -ne "$_size" ]; then
		M_ERROR="size mismatch: data is $((_size - 8 - _len - FOOTER_SIZE)) bytes, manifest says $M_DATA_BYTES (truncated or damaged)"
		return 1
	fi
	return 0
}

# read_manifest_native FILE: the same checks and M_* values from `mkma-unpack -i`, one process
# instead of seven; the body is not written out (with mkma-unpack nothing else reads it).
read_manifest_native() {
	mkma-unpack -i -- "$1" >"$MKMA_TMP/info" 2>&1
	read -r _ok M_KIND M_ENTRIES M_UNPACKED M_DATA_BYTES <"$MKMA_TMP/info"
	if [ "$_ok" != ok ]; then
		read -r _line <"$MKMA_TMP/info"
		M_ERROR=${_line#bad }
		[ "$_ok" = bad ] || M_ERROR="mkma-unpack -i failed: $_line"
		return 1
	fi
	return 0
}

# extract FILE DIR [FLAG]: unpacks the whole archive into DIR (FLAG: for mkma-unpack). With mkma-unpack in the initramfs
# (init/unpack/mkma-unpack.c: shards in parallel, few syscalls per entry) that does it all;
# otherwise busybox cpio, failing if zstd (checksums, truncation) or cpio (structure) fails.
# No pipefail in POSIX sh: zstd's status travels through a file.
extract() {
	case $1 in
	/*) _file=$1 ;;
	*) _file=$PWD/$1 ;;
	esac
	if have_unpacker; then
		# shellcheck disable=SC2086 # $3: an optional flag
		mkma-unpack ${3:-} -- "$_file" "$2" >"$MKMA_TMP/unpack.out" 2>"$MKMA_TMP/unpack.err" && return 0
		_st=$?
		_e=$(tail -n 1 "$MKMA_TMP/unpack.err")
		M_ERROR="mkma-unpack: ${_e#"mkma-unpack: $_file: "}"
		[ -n "$_e" ] || M_ERROR="mkma-unpack failed (exit status $_st)"
		return 1
	fi
	rm -f "$MKMA_TMP/zstd.status"
	(
		cd "$2" || exit 1
		{ zstd -q -dc -- "$_file" || echo "$?" >"$MKMA_TMP/zstd.status"; } | cpio -i -d -m 2>"$MKMA_TMP/cpio.err"
	) || {
		M_ERROR="cpio: $(tail -n 1 "$MKMA_TMP/cpio.err")"
		return 1
	}
	if [ -e "$MKMA_TMP/zstd.status" ]; then
		M_ERROR="zstd could not decompress it (corrupt or truncated data)"
		return 1
	fi
	return 0
}

# decode ESCAPED: sets DECODED to the raw path (\0ooo escapes, see escapePath in
# manifest.ts). A variable, not output: $(...) would strip a trailing newline of the name.
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

# each_removal MANIFEST FN [ARG]: calls FN PATH [ARG] for every opaque/delete path of the
# manifest, in order (decoded); stops with status 1 as soon as FN fails.
each_removal() {
	while IFS= read -r _line; do
		case $_line in
		"opaque "* | "delete "*) ;;
		"$XATTR_SECTION") break ;;
		*) continue ;;
		esac
		decode "${_line#* }"
		"$2" "$DECODED" "${3:-}" || return 1
	done <"$1"
	return 0
}

# check_removals MANIFEST: every opaque/delete path must be safe, else the layer is refused.
check_removals() {
	each_removal "$1" refuse_unsafe
}

refuse_unsafe() {
	safe_rel "$1" && return 0
	M_ERROR="unsafe path in manifest: $1"
	return 1
}

# check_names FILE: with busybox cpio (apply_layer, no mkma-unpack), refuse archive members with a ".."
# component (they would land outside the staging directory) before extracting anything.
# Busybox strips a leading "/" itself. A name with a newline followed by "../" is refused
# too: safe, and rare enough.
check_names() {
	if zstd -q -dc -- "$1" 2>/dev/null | cpio -t 2>/dev/null | grep -q -e '^\.\.$' -e '^\.\./' -e '/\.\./' -e '/\.\.$'; then
		M_ERROR="unsafe path in archive"
		return 1
	fi
	return 0
}

# parents_are_dirs ROOT REL: true when every parent of REL under ROOT is a real directory.
# A path under a symlink does not exist in the layer's view; following it would delete
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

# apply_removals TREE MANIFEST: rule 2, every `opaque` and `delete` path leaves the tree.
apply_removals() {
	M_REMOVED=0
	each_removal "$2" remove_path "$1"
}

# remove_path PATH TREE: never through a symlinked parent (see parents_are_dirs).
remove_path() {
	safe_rel "$1" || return 0
	parents_are_dirs "$2" "$1" || return 0
	if [ -e "$2/$1" ] || [ -L "$2/$1" ]; then
		rm -rf "${2:?}/$1"
		M_REMOVED=$((M_REMOVED + 1))
	fi
	return 0
}

# copy_dir_meta FROM TO: owner, then mode (chown clears setgid), then mtime.
copy_dir_meta() {
	chown "$(stat -c %u:%g "$1")" "$2"
	chmod "$(stat -c %a "$1")" "$2"
	touch -r "$1" "$2"
}

# merge_dir STAGE TREE: rule 3, top-down; globs (not find | read) so any byte in a name is safe.
merge_dir() {
	local s t
	for s in "$1"/* "$1"/.[!.]* "$1"/..?*; do
		[ -e "$s" ] || [ -L "$s" ] || continue
		t="$2/${s##*/}"
		if [ -d "$s" ] && [ ! -L "$s" ] && [ -d "$t" ] && [ ! -L "$t" ]; then
			merge_dir "$s" "$t"
			copy_dir_meta "$s" "$t"
		else
			if [ -e "$t" ] || [ -L "$t" ]; then
				rm -rf "$t"
			fi
			mv "$s" "$t"
		fi
	done
}

# restore_xattrs TREE MANIFEST: rule 4, the %xattrs section through setfattr --restore.
restore_xattrs() {
	sed -n "/^$XATTR_SECTION\$/,\$p" "$2" | tail -n +2 >"$MKMA_TMP/xattrs"
	[ -s "$MKMA_TMP/xattrs" ] || return 0
	grep -q '^# file: ' "$MKMA_TMP/xattrs" || return 0
	restore_xattr_file "$1" "$MKMA_TMP/xattrs"
}

# restore_xattr_file TREE FILE: FILE in `getfattr -d` format, paths relative to TREE.
restore_xattr_file() {
	(cd "$1" && setfattr -h --restore="$2") 2>"$MKMA_TMP/setfattr.err" || {
		warn "some extended attributes could not be restored: $(tail -n 1 "$MKMA_TMP/setfattr.err")"
	}
}

# unpack_base FILE TREE: the base image into an empty TREE.
unpack_base() {
	read_manifest "$1" "$MKMA_TMP/base.manifest" || return 1
	if [ "$M_KIND" != base ]; then
		M_ERROR="not a base image (kind $M_KIND)"
		return 1
	fi
	if have_unpacker; then
		# -X: the xattrs too, without sed/grep/setfattr processes
		extract "$1" "$2" -X || return 1
		while IFS=' ' read -r _what _l _rest; do
			[ "$_what" = warn ] && warn "$_l: $_rest"
		done <"$MKMA_TMP/unpack.out"
		return 0
	fi
	extract "$1" "$2" || return 1
	restore_xattrs "$2" "$MKMA_TMP/base.manifest"
}

# apply_layer FILE TREE STAGE: all or nothing, without mkma-unpack (busybox cpio). Everything
# that can fail (manifest, zstd checksums, cpio) happens in STAGE before the tree is
# touched. Sets M_ENTRIES, M_REMOVED.
apply_layer() {
	rm -rf "$3"
	mkdir -p "$3"
	if ! read_manifest "$1" "$MKMA_TMP/layer.manifest"; then
		rm -rf "$3"
		return 1
	fi
	if [ "$M_KIND" != layer ]; then
		M_ERROR="not a layer (kind $M_KIND)"
		rm -rf "$3"
		return 1
	fi
	if ! check_removals "$MKMA_TMP/layer.manifest" || ! check_names "$1"; then
		rm -rf "$3"
		return 1
	fi
	if ! extract "$1" "$3"; then
		rm -rf "$3"
		return 1
	fi
	apply_removals "$2" "$MKMA_TMP/layer.manifest"
	merge_dir "$3" "$2"
	restore_xattrs "$2" "$MKMA_TMP/layer.manifest"
	rm -rf "$3"
	return 0
}

# apply_layers DIR TREE STAGE: every layer of DIR (sort_layers) onto TREE, in order; a
# phase line per applied layer, "LAYER SKIPPED NAME: reason" for the others. Sets
# M_APPLIED and M_SKIPPED. With mkma-unpack all layers are applied by one process
# (mkma-unpack -l): the shell's merge starts processes per entry and directory, and that
# fixed cost per layer made 20 small layers cost several times one layer of the same content.
apply_layers() {
	M_APPLIED=0
	M_SKIPPED=0
	if ! have_unpacker; then
		for _l in $(sort_layers "$1"); do
			if apply_layer "$1/$_l" "$2" "$3"; then
				layer_applied "$_l" "$M_ENTRIES" "$M_REMOVED"
			else
				layer_skipped "$_l" "$M_ERROR"
			fi
		done
		return 0
	fi
	_dir=$1 _tree=$2 _stage=$3
	# shellcheck disable=SC2046 # layer names are [0-9A-Za-z._+-] (sort_layers)
	set -- $(sort_layers "$_dir")
	[ $# -gt 0 ] || return 0
	for _l; do set -- "$@" "$_dir/$_l"; shift; done
	mkma-unpack -l -- "$_tree" "$_stage" "$@" >"$MKMA_TMP/layers.out" 2>"$MKMA_TMP/unpack.err"
	_st=$?
	while IFS=' ' read -r _what _l _rest; do
		case $_what in
		ok) layer_applied "$_l" "${_rest% *}" "${_rest#* }" ;;
		skip) layer_skipped "$_l" "$_rest" ;;
		partial) layer_skipped "$_l" "PARTLY APPLIED, the system may be inconsistent: $_rest" ;;
		warn) warn "$_l: $_rest" ;;
		esac
	done <"$MKMA_TMP/layers.out"
	if [ "$_st" -eq 2 ]; then
		warn "mkma-unpack -l failed: $(tail -n 1 "$MKMA_TMP/unpack.err")"
		M_SKIPPED=$#
	fi
	return 0
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

# layer_sizes DIR LAYER...: the sum of the layers' unpacked sizes in M_LAYERS_UNPACKED;
# unreadable layers count 0 (they are skipped later, with the reason).
layer_sizes() {
	M_LAYERS_UNPACKED=0
	_dir=$1
	shift
	[ $# -gt 0 ] || return 0
	if have_unpacker; then
		# one process for all the manifests
		for _l; do set -- "$@" "$_dir/$_l"; shift; done
		mkma-unpack -i -- "$@" >"$MKMA_TMP/sizes" 2>/dev/null
		while read -r _ok _kind _entries _unpacked _rest; do
			[ "$_ok" = ok ] && is_number "$_unpacked" && M_LAYERS_UNPACKED=$((M_LAYERS_UNPACKED + _unpacked))
		done <"$MKMA_TMP/sizes"
		return 0
	fi
	for _l; do
		if read_manifest "$_dir/$_l" "$MKMA_TMP/size.manifest"; then
			M_LAYERS_UNPACKED=$((M_LAYERS_UNPACKED + M_UNPACKED))
		fi
	done
}

# sort_layers DIR: layer file names in natural order (format/names.ts: naturalKey), one per
# line. Names outside the layer pattern are not layers and are reported, not applied.
sort_layers() {
	# no layers (a fresh machine): no awk/sort/cut processes
	set -- "$1" "$1"/"$LAYER_PREFIX"*"$LAYER_SUFFIX"
	[ -e "$2" ] || return 0
	for _f in "$1"/"$LAYER_PREFIX"*"$LAYER_SUFFIX"; do
		[ -f "$_f" ] || continue
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

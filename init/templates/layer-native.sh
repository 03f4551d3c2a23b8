# --- layer-native.sh: the layer code when the initramfs carries mkma-unpack ---------------
# (init/unpack/mkma-unpack.c: shards in parallel, few syscalls per entry, all layers in one
# process). Its output protocol and exit statuses are the contract's UNPACK_* constants.

# read_manifest FILE: the manifest's checks and facts from `mkma-unpack -i`. Sets M_KIND
# M_ENTRIES M_UNPACKED M_DATA_BYTES, or fails with M_ERROR.
read_manifest() {
	M_ERROR=''
	mkma-unpack -i -- "$1" >"$MKMA_TMP/info" 2>&1
	# shellcheck disable=SC2034 # M_UNPACKED, M_DATA_BYTES: read by main.sh
	read -r _ok M_KIND M_ENTRIES M_UNPACKED M_DATA_BYTES <"$MKMA_TMP/info"
	if [ "$_ok" != "$UNPACK_OK" ]; then
		read -r _line <"$MKMA_TMP/info"
		M_ERROR=${_line#"$UNPACK_BAD "}
		[ "$_ok" = "$UNPACK_BAD" ] || M_ERROR="mkma-unpack -i failed: $_line"
		return 1
	fi
	return 0
}

# layer_sizes DIR LAYER...: the sum of the layers' unpacked sizes in M_LAYERS_UNPACKED (one
# process for all the manifests); unreadable layers count 0 (they are skipped later).
layer_sizes() {
	M_LAYERS_UNPACKED=0
	_dir=$1
	shift
	[ $# -gt 0 ] || return 0
	for _l; do set -- "$@" "$_dir/$_l"; shift; done
	mkma-unpack -i -- "$@" >"$MKMA_TMP/sizes" 2>/dev/null
	while read -r _ok _kind _entries _unpacked _rest; do
		[ "$_ok" = "$UNPACK_OK" ] && is_number "$_unpacked" && M_LAYERS_UNPACKED=$((M_LAYERS_UNPACKED + _unpacked))
	done <"$MKMA_TMP/sizes"
	return 0
}

# unpack_base FILE TREE: the base image, with its xattrs (-X), into the empty TREE.
unpack_base() {
	read_manifest "$1" || return 1
	if [ "$M_KIND" != base ]; then
		M_ERROR="not a base image (kind $M_KIND)"
		return 1
	fi
	mkma-unpack -X -- "$1" "$2" >"$MKMA_TMP/unpack.out" 2>"$MKMA_TMP/unpack.err"
	_st=$?
	if [ "$_st" -ne "$UNPACK_EXIT_OK" ]; then
		_e=$(tail -n 1 "$MKMA_TMP/unpack.err")
		M_ERROR="mkma-unpack: ${_e#"mkma-unpack: $1: "}"
		[ -n "$_e" ] || M_ERROR="mkma-unpack failed (exit status $_st)"
		return 1
	fi
	while IFS=' ' read -r _what _l _rest; do
		[ "$_what" = "$UNPACK_WARN" ] && warn "$_l: $_rest"
	done <"$MKMA_TMP/unpack.out"
	return 0
}

# apply_layers DIR TREE STAGE: the layers of DIR this boot applies (boot_layers) onto TREE, in order, by
# `mkma-unpack -l` (one process: the shell's merge would start processes per entry). A
# phase line per applied layer, "LAYER SKIPPED NAME: reason" for the others; sets M_APPLIED
# and M_SKIPPED. When mkma-unpack ends without a result line for some layer (it crashed or
# was killed), that layer is reported — partly applied if its "merge" line came, else not
# applied — its staging directories are removed, and the layers after it are applied by a
# new run: every layer gets a line, and the tree holds exactly the layers reported applied
# (plus, loudly, a partly applied one).
apply_layers() {
	M_APPLIED=0
	M_SKIPPED=$(plan_damaged "$1") # layer_intact: skipped before they could be applied
	_dir=$1 _tree=$2 _stage=$3
	# shellcheck disable=SC2046 # layer names are [0-9A-Za-z._+-@,] (layer_state)
	set -- $(boot_layers "$_dir")
	while [ $# -gt 0 ]; do
		_n=$#
		for _l; do set -- "$@" "$_dir/$_l"; shift; done
		mkma-unpack -l -- "$_tree" "$_stage" "$@" >"$MKMA_TMP/layers.out" 2>"$MKMA_TMP/unpack.err"
		_st=$?
		_done=0 _merging=''
		while IFS=' ' read -r _what _l _rest; do
			case $_what in
			"$UNPACK_OK") layer_applied "$_l" "${_rest% *}" "${_rest#* }" ;;
			"$UNPACK_SKIP") layer_skipped "$_l" "$_rest" ;;
			"$UNPACK_PARTIAL") layer_skipped "$_l" "PARTLY APPLIED, the system may be inconsistent: $_rest" ;;
			"$UNPACK_WARN") warn "$_l: $_rest" ;;
			"$UNPACK_MERGE") _merging=$_l ;;
			esac
			case $_what in "$UNPACK_OK" | "$UNPACK_SKIP" | "$UNPACK_PARTIAL") _done=$((_done + 1)) _merging='' ;; esac
		done <"$MKMA_TMP/layers.out"
		[ "$_done" -lt "$_n" ] || return 0
		shift "$_done"
		_l=${1##*/}
		if [ "$_st" -gt 128 ]; then
			_how="was killed by signal $((_st - 128))"
		elif [ "$_st" -eq "$UNPACK_EXIT_USAGE" ]; then
			_how="failed ($(tail -n 1 "$MKMA_TMP/unpack.err"))"
		else
			_how="ended (exit status $_st) without a result"
		fi
		if [ "$_merging" = "$_l" ]; then
			layer_skipped "$_l" "PARTLY APPLIED, the system may be inconsistent: mkma-unpack $_how while merging it"
		else
			layer_skipped "$_l" "not applied: mkma-unpack $_how before applying it"
		fi
		rm -rf "$_stage".*
		shift
		for _p; do set -- "$@" "${_p##*/}"; shift; done
	done
	return 0
}
